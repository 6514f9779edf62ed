"""Load benchmark of the HTTP API: N concurrent clients polling job status and listing jobs while jobs train.

Starts a bundled Redis, the API (`uvicorn backend.api.main:app`, one process) and one Celery worker
(the contract commands) as subprocesses, submits a few small jobs that train for the whole run, then
for each N runs N clients in a separate process, each looping over `GET /api/jobs/{id}` (a random
job) and `GET /api/jobs?limit=20`. Reports requests/s, p50/p99 latency and errors per N, and the
worker's iterations/s meanwhile (training shares the machine). Prints a markdown table
(docs/reliability.md).

    .venv/bin/python benchmarks/bench_api_load.py                      # N = 1, 8, 32, 64
    .venv/bin/python benchmarks/bench_api_load.py --clients 16 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

JOB_OPTIONS = {"experiment": "growing", "target_size": 12, "padding": 4, "batch_size": 2, "min_steps": 8,
               "max_steps": 12, "iterations": 20000, "checkpoint_every": 50, "seed": 1}


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited early")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            time.sleep(0.1)


def square_png() -> bytes:
    from PIL import Image

    img = Image.new("RGBA", (24, 24), (0, 0, 0, 0))
    img.paste((200, 40, 40, 255), (4, 4, 20, 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


async def client_loop(base: str, job_ids: list[str], until: float, latencies: list[float], errors: list[str]) -> None:
    import httpx

    rng = random.Random()
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        while time.monotonic() < until:
            path = f"/api/jobs/{rng.choice(job_ids)}" if rng.random() < 0.5 else "/api/jobs?limit=20"
            start = time.perf_counter()
            try:
                response = await http.get(path)
                if response.status_code != 200:
                    errors.append(f"{path}: {response.status_code}")
            except httpx.HTTPError as exc:
                errors.append(f"{path}: {type(exc).__name__}")
            latencies.append(time.perf_counter() - start)


def run_clients(base: str, job_ids: list[str], clients: int, seconds: float) -> dict:
    """In this (client) process: `clients` concurrent loops for `seconds`."""
    latencies: list[float] = []
    errors: list[str] = []

    async def main() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(client_loop(base, job_ids, until, latencies, errors) for _ in range(clients)))

    start = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - start
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {"clients": clients, "requests": len(latencies), "rps": len(latencies) / elapsed, "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
            "errors": len(errors), "error_samples": errors[:5]}


def iterations_done(base: str, job_ids: list[str]) -> int:
    import httpx

    return sum(httpx.get(f"{base}/api/jobs/{job_id}", timeout=10).json()["iteration"] for job_id in job_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--jobs", type=int, default=4, help="jobs submitted; one trains at a time, the rest queue")
    parser.add_argument("--client-process", nargs=4, metavar=("BASE", "JOBS", "N", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_process:
        base, jobs, n, seconds = args.client_process
        print(json.dumps(run_clients(base, jobs.split(","), int(n), float(seconds))))
        return

    import httpx

    from backend.storage.embedded_redis import free_port, start_redis

    work = Path(tempfile.mkdtemp(prefix="nca-bench-api-"))
    redis = start_redis(data_dir=work / "redis")
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis.url, "NCA_MODELS_DIR": str(work / "models"), "NCA_DEVICE": "cpu",
           "NCA_TORCH_THREADS": "1", "NCA_PROGRESS_EVERY": "0.5", "PYTHONPATH": str(REPO_ROOT)}
    logs = [(work / name).open("wb") for name in ("api.log", "worker.log")]
    api = subprocess.Popen([sys.executable, "-m", "uvicorn", "backend.api.main:app", "--host", "127.0.0.1",
                            "--port", str(port), "--no-access-log"], cwd=REPO_ROOT, env=env, stdout=logs[0],
                           stderr=subprocess.STDOUT)
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "backend.worker.celery_app", "worker",
                               "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1", "--loglevel=WARNING"],
                              cwd=REPO_ROOT, env=env, stdout=logs[1], stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_listening(port, api)
        png, fields = square_png(), {k: str(v) for k, v in JOB_OPTIONS.items()}
        job_ids = []
        for _ in range(args.jobs):
            response = httpx.post(f"{base}/api/jobs", files={"image": ("sq.png", png, "image/png")}, data=fields,
                                  timeout=30)
            response.raise_for_status()
            job_ids.append(response.json()["id"])
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/api/jobs/{job_ids[0]}", timeout=10).json()["iteration"] == 0:
            assert time.monotonic() < deadline, "the first job never started training"
            time.sleep(0.2)
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
              f"{args.jobs} jobs queued, one training; {args.seconds:g} s per row", file=sys.stderr)
        rows = []
        for n in args.clients:
            before, t0 = iterations_done(base, job_ids), time.monotonic()
            out = subprocess.run([sys.executable, __file__, "--client-process", base, ",".join(job_ids), str(n),
                                  str(args.seconds)], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
            row = json.loads(out.stdout)
            row["train_its"] = (iterations_done(base, job_ids) - before) / (time.monotonic() - t0)
            rows.append(row)
            print(f"N={n}: {row}", file=sys.stderr)
        print("| clients | requests | requests/s | p50 ms | p99 ms | max ms | errors | training it/s meanwhile |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['clients']} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                  f"| {r['max_ms']:.0f} | {r['errors']} | {r['train_its']:.0f} |")
        if any(r["errors"] for r in rows):
            sys.exit("some requests failed: " + "; ".join(s for r in rows for s in r["error_samples"]))
    finally:
        for process in (worker, api):
            process.terminate()
        for process in (worker, api):
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        redis.stop()
        for log in logs:
            log.close()


if __name__ == "__main__":
    main()
