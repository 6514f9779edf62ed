"""Load benchmark of the stream service: N real WebSocket viewers on loopback, fps and p95 frame gap.

Starts a bundled Redis and the stream service (`uvicorn backend.stream.app:app`) as subprocesses
with one 72x72 model: the Distill regenerating lizard when ../shared is present, otherwise a
random-weight model of the same size (same compute per step). For each N the viewers run in a
separate client process, all playing the model at --fps with one CA step per frame; each
records when its frames arrive. Prints a markdown table (docs/benchmarks.md, section stream).

    .venv/bin/python benchmarks/bench_stream.py                      # N = 1, 8, 16, 32, 40
    .venv/bin/python benchmarks/bench_stream.py --clients 32 --seconds 20 --compression
    .venv/bin/python benchmarks/bench_stream.py --proxy --replicas 2  # through Caddy (deploy/Caddyfile), 2 replicas
    .venv/bin/python benchmarks/bench_stream.py --latency            # what the proxy adds: connect, command round trip

With --proxy the viewers connect through the real proxy (Caddy with deploy/Caddyfile, as under
`python -m backend.run`), which spreads them over --replicas stream processes (each with
--torch-threads, default 1 per replica when there are several).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

DISTILL_LIZARD = REPO_ROOT.parent / "shared" / "reference" / "distill-webgl-models" / "regenerating_lizard.json"
TARGET_FPS, TARGET_P95_MS, TARGET_CLIENTS = 25.0, 80.0, 32


def write_model(models_dir: Path) -> str:
    """A 72x72 model file in models_dir; returns its stream id."""
    import torch

    from backend.nca import modelfile
    from backend.nca.model import NCA
    from backend.nca.modelfile import ModelFile, ModelInfo

    if DISTILL_LIZARD.exists():
        from backend.nca.distill import import_distill

        modelfile.save(import_distill(DISTILL_LIZARD), models_dir / "lizard.safetensors")
        return "example-lizard"
    torch.manual_seed(0)
    net = NCA()
    with torch.no_grad():
        net.hidden_to_update.weight.normal_(0.0, 0.02)
    modelfile.save(ModelFile(net, ModelInfo(grid_height=72, grid_width=72, name="random")),
                   models_dir / "random72.safetensors")
    return "example-random72"


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0, name: str = "the stream service"
                  ) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited early")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start") from None
            time.sleep(0.1)


def start_proxy(stream_ports: list[int], tmp: Path) -> tuple[subprocess.Popen, int]:
    """Caddy with deploy/Caddyfile in front of the stream replicas, as `python -m backend.run` starts it."""
    from backend.config import Settings
    from backend.run import caddy_binary, proxy_service
    from backend.storage.embedded_redis import free_port

    port = free_port()
    proxy = proxy_service(Settings(proxy_port=port, data_dir=tmp / "data"), caddy_binary())
    proxy.env["NCA_PROXY_STREAM_ADDRESSES"] = " ".join(f"127.0.0.1:{p}" for p in stream_ports)
    process = subprocess.Popen(proxy.command, cwd=REPO_ROOT, env={**os.environ, **proxy.env})
    wait_for_port(port, process, name="the proxy")
    return process, port


# --- the client process -----------------------------------------------------------------------------


async def viewer(url: str, compression: bool, start_at: float, stop_at: float, arrivals: list[float],
                 errors: list[str]) -> None:
    import websockets

    try:
        async with websockets.connect(url, compression="deflate" if compression else None, max_size=None) as ws:
            while (now := time.monotonic()) < stop_at:
                message = await asyncio.wait_for(ws.recv(), 5.0)
                if isinstance(message, bytes) and now >= start_at:
                    arrivals.append(time.monotonic())
    except Exception as exc:  # reported in the results, not raised: one failure must not hide the rest
        errors.append(f"{type(exc).__name__}: {exc}")


async def run_clients(url: str, n: int, seconds: float, warmup: float, compression: bool) -> dict:
    start_at = time.monotonic() + warmup
    stop_at = start_at + seconds
    arrivals: list[list[float]] = [[] for _ in range(n)]
    errors: list[str] = []
    await asyncio.gather(*(viewer(url, compression, start_at, stop_at, a, errors) for a in arrivals))
    return {"arrivals": arrivals, "errors": errors}


def client_main(args: argparse.Namespace) -> None:
    result = asyncio.run(run_clients(args.url, args.n, args.seconds, args.warmup, args.compression))
    json.dump(result, sys.stdout)


# --- the driver ----------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100.0 * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, n: int, seconds: float, warmup: float, compression: bool, health_urls: list[str],
            server_pids: list[int], proxy_pid: int | None) -> dict:
    """One run of N viewers. With several replicas the tick times are the slowest replica's, the server
    CPU the replicas' sum; the proxy's CPU is its own column."""
    command = [sys.executable, __file__, "--client-run", "--url", url, "--n", str(n), "--seconds", str(seconds),
               "--warmup", str(warmup)] + (["--compression"] if compression else [])
    watched = [*server_pids, *([proxy_pid] if proxy_pid else [])]
    cpu_before, clients_cpu, wall = [cpu_seconds(p) for p in watched], resource.getrusage(resource.RUSAGE_CHILDREN), \
        time.monotonic()
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + warmup + 120, check=True)
    wall = time.monotonic() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the client process only: the servers are not reaped yet
    clients_cpu = (after.ru_utime + after.ru_stime - clients_cpu.ru_utime - clients_cpu.ru_stime) / wall
    used = [(cpu_seconds(p) - before) / wall for p, before in zip(watched, cpu_before, strict=True)]
    result = json.loads(out.stdout)
    fps = [(len(a) - 1) / (a[-1] - a[0]) if len(a) > 1 else 0.0 for a in result["arrivals"]]
    gaps = [(b - a) * 1000.0 for arr in result["arrivals"] for a, b in zip(arr, arr[1:], strict=False)]
    import httpx

    ticks = [httpx.get(url, timeout=5).json()["tick_ms"] for url in health_urls]
    return {"n": n, "mean_fps": sum(fps) / len(fps), "min_fps": min(fps), "p95_gap_ms": percentile(gaps, 95),
            "max_gap_ms": max(gaps, default=float("nan")), "errors": result["errors"],
            "tick_ms": max(t["p50"] for t in ticks if t), "tick_p95_ms": max(t["p95"] for t in ticks if t),
            "server_cpu": sum(used[:len(server_pids)]) * 100, "clients_cpu": clients_cpu * 100,
            "proxy_cpu": used[-1] * 100 if proxy_pid else None}


async def _connect_and_round_trips(url: str, commands: int) -> tuple[float, list[float]]:
    """Seconds to open a stream (until its `model` event), and each command's round trip (a `pause`
    answered by its `state` event; the stream is paused, so no frame comes between)."""
    import websockets

    started = time.perf_counter()
    async with websockets.connect(url, compression=None, max_size=None) as ws:
        async def until(kind: str) -> None:
            while not (isinstance(m := await asyncio.wait_for(ws.recv(), 10.0), str) and json.loads(m)["type"] == kind):
                pass

        await until("model")
        connect = time.perf_counter() - started
        trips = []
        for i in range(commands + 1):
            sent = time.perf_counter()
            await ws.send('{"cmd": "pause"}')
            await until("state")
            if i:  # the first one also waits for frames already on their way
                trips.append(time.perf_counter() - sent)
            await asyncio.sleep(0.02)  # well under the command rate limit
    return connect, trips


def latency(direct: str, proxied: str, rounds: int) -> None:
    """Connect time and command round trip, direct and through the proxy, interleaved so that the machine's
    load falls on both alike."""
    results: dict[str, tuple[list[float], list[float]]] = {"direct": ([], []), "through the proxy": ([], [])}
    for _ in range(rounds):
        for name, url in (("direct", direct), ("through the proxy", proxied)):
            connect, trips = asyncio.run(_connect_and_round_trips(url, 20))
            results[name][0].append(connect * 1000)
            results[name][1].extend(t * 1000 for t in trips)
    print(f"{rounds} connections and {rounds * 20} commands per path, interleaved\n")
    print("| path | open a stream ms p50 / p95 | command round trip ms p50 / p95 |")
    print("|:---|---:|---:|")
    for name, (connects, trips) in results.items():
        print(f"| {name} | {percentile(connects, 50):.2f} / {percentile(connects, 95):.2f} | "
              f"{percentile(trips, 50):.2f} / {percentile(trips, 95):.2f} |")
    (dc, dt), (pc, pt) = results.values()
    print(f"| added by the proxy (p50) | {percentile(pc, 50) - percentile(dc, 50):+.2f} | "
          f"{percentile(pt, 50) - percentile(dt, 50):+.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8,16,32,40", help="comma-separated viewer counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per count")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of play before measuring")
    parser.add_argument("--fps", type=float, default=30.0, help="fps each viewer asks for")
    parser.add_argument("--compression", action="store_true",
                        help="viewers negotiate permessage-deflate, as browsers do")
    parser.add_argument("--server-deflate", choices=["on", "off"], default="on",
                        help="uvicorn --ws-per-message-deflate (on is uvicorn's default)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="NCA_STREAM_TORCH_THREADS per replica (default: torch's own with one replica, else 1)")
    parser.add_argument("--proxy", action="store_true", help="viewers connect through Caddy with deploy/Caddyfile")
    parser.add_argument("--replicas", type=int, default=1, help="stream processes behind the proxy (implies --proxy)")
    parser.add_argument("--latency", action="store_true",
                        help="instead of viewers vs fps: what the proxy adds to opening a stream and to a command")
    parser.add_argument("--rounds", type=int, default=30, help="with --latency: connections per path")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--client-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_run:
        return client_main(args)

    import torch

    from backend.storage.embedded_redis import free_port, start_redis

    counts = [int(c) for c in args.clients.split(",")]
    through_proxy = args.proxy or args.replicas > 1 or args.latency
    threads = args.torch_threads if args.torch_threads is not None else (0 if args.replicas == 1 else 1)
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        models_dir = Path(tmp) / "models"
        models_dir.mkdir()
        model_id = write_model(models_dir)
        redis = start_redis(data_dir=Path(tmp) / "redis")
        capacity = str(max(counts) + 8)  # all viewers come from one address
        env = {**os.environ, "REDIS_URL": redis.url, "NCA_MODELS_DIR": str(models_dir), "NCA_DEVICE": args.device,
               "NCA_STREAM_MAX_SESSIONS": capacity, "NCA_STREAM_MAX_SESSIONS_PER_CLIENT": capacity,
               "NCA_STREAM_TORCH_THREADS": str(threads)}
        ports = [free_port() for _ in range(args.replicas)]
        servers = [subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "backend.stream.app:app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning", "--ws-per-message-deflate", "true" if args.server_deflate == "on" else "false"],
            cwd=REPO_ROOT, env=env) for port in ports]
        proxy = None
        try:
            for port, server in zip(ports, servers, strict=True):
                wait_for_port(port, server)
            if through_proxy:
                proxy, proxy_port = start_proxy(ports, Path(tmp))
            health_urls = [f"http://127.0.0.1:{port}/health" for port in ports]
            import httpx

            health = httpx.get(health_urls[0], timeout=5).json()
            query = f"/ws/stream?model={model_id}&fps={args.fps:g}&steps_per_frame=1"
            direct = f"ws://127.0.0.1:{ports[0]}{query}"
            url = f"ws://127.0.0.1:{proxy_port}{query}" if proxy else direct
            print(f"model {model_id} 72x72, {args.fps:g} fps asked, 1 step/frame, {args.seconds:g} s per N; "
                  f"device {health['device']}, torch {torch.__version__}, {health['torch_threads']} torch threads "
                  f"x {args.replicas} replica(s){' behind the proxy' if proxy else ''}, "
                  f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); "
                  f"client deflate {'on' if args.compression else 'off'}, server deflate {args.server_deflate}; "
                  f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
            if args.latency:
                return latency(direct, url, args.rounds)
            print("| viewers | mean fps | min fps | p95 gap ms | max gap ms | tick ms p50 / p95 | server CPU % | "
                  "proxy CPU % | clients CPU % | target met |")
            print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|")
            for n in counts:
                r = measure(url, n, args.seconds, args.warmup, args.compression, health_urls,
                            [s.pid for s in servers], proxy.pid if proxy else None)
                met = r["min_fps"] >= TARGET_FPS and r["p95_gap_ms"] <= TARGET_P95_MS
                proxy_cpu = "-" if r["proxy_cpu"] is None else f"{r['proxy_cpu']:.0f}"
                print(f"| {n} | {r['mean_fps']:.1f} | {r['min_fps']:.1f} | {r['p95_gap_ms']:.0f} | "
                      f"{r['max_gap_ms']:.0f} | {r['tick_ms']:.0f} / {r['tick_p95_ms']:.0f} | "
                      f"{r['server_cpu']:.0f} | {proxy_cpu} | {r['clients_cpu']:.0f} | "
                      f"{'yes' if met else 'no'} |", flush=True)
                for error in r["errors"][:3]:
                    print(f"  client error: {error}")
                time.sleep(1.0)  # let the last viewers' sessions end
        finally:
            for process in [*([proxy] if proxy else []), *servers]:
                process.terminate()
                process.wait(15)
            redis.stop()

if __name__ == "__main__":
    main()
