"""Rooms: participants per room vs fps, server CPU and bytes per participant, and the failover time after
a kill -9 of the replica that plays the room (docs/benchmarks.md, section rooms).

Starts a bundled Redis, --replicas stream processes and the real proxy (Caddy with deploy/Caddyfile), with
one 72x72 model (the Distill regenerating lizard when ../shared is present, else a random-weight model of
that size). For each N, N real `websockets` participants join one room through the proxy (in a separate
client process, as bench_stream.py's viewers) and record their frame arrivals; `--private` runs the same N
as private streams of the same model (today's Watch view) for comparison.

    .venv/bin/python benchmarks/bench_rooms.py                          # N = 1, 10, 30, 60, 90 in one room
    .venv/bin/python benchmarks/bench_rooms.py --participants 30 --private --compression
    .venv/bin/python benchmarks/bench_rooms.py --failover --kills 5      # kill -9 the hosting replica 5 times

Bytes per participant are what the stream processes wrote to their sockets (/proc/<pid>/io `wchar`, Linux),
divided by participants and seconds: with --compression that is the deflated size, as browsers get it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_stream import measure, start_proxy, wait_for_port, write_model  # noqa: E402

TARGET_FPS = 25.0
RETRY_MIN, RETRY_MAX = 0.5, 10.0  # frontend/js/stream.js's reconnect backoff


def written(pid: int) -> int:
    """Bytes a process has passed to write/send syscalls so far (sockets included)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def new_room(redis_url: str, model: str) -> str:
    from backend.storage.connection import connect
    from backend.storage.rooms import RoomStore

    client = connect(redis_url)
    room, _ = RoomStore(client, idle_timeout=600).create(model, "bench", 1000)
    client.close()
    return room.id


def run_counts(args: argparse.Namespace, redis_url: str, model: str, proxy_port: int, ports: list[int],
               servers: list[subprocess.Popen], proxy: subprocess.Popen) -> None:
    print("| kind | participants | mean fps | min fps | p95 gap ms | tick ms p50 / p95 | server CPU % | "
          "CPU % per participant | proxy CPU % | KB per participant per s | ≥ 25 fps |")
    print("|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|")
    kinds = ["room", "private"] if args.private else ["room"]
    for n in [int(c) for c in args.participants.split(",")]:
        for kind in kinds:
            if kind == "room":
                query = f"/ws/stream?room={new_room(redis_url, model)}"
            else:
                query = f"/ws/stream?model={model}&fps=30&steps_per_frame=1"
            url = f"ws://127.0.0.1:{proxy_port}{query}"
            before, started = sum(written(s.pid) for s in servers), time.monotonic()
            r = measure(url, n, args.seconds, args.warmup, args.compression,
                        [f"http://127.0.0.1:{p}/health" for p in ports], [s.pid for s in servers], proxy.pid)
            sent = (sum(written(s.pid) for s in servers) - before) / (time.monotonic() - started)
            met = "yes" if r["min_fps"] >= TARGET_FPS else "no"
            print(f"| {kind} | {n} | {r['mean_fps']:.1f} | {r['min_fps']:.1f} | {r['p95_gap_ms']:.0f} | "
                  f"{r['tick_ms']:.0f} / {r['tick_p95_ms']:.0f} | {r['server_cpu']:.0f} | "
                  f"{r['server_cpu'] / n:.1f} | {r['proxy_cpu']:.0f} | {sent / n / 1000:.0f} | {met} |", flush=True)
            for error in r["errors"][:3]:
                print(f"  client error: {error}")
            time.sleep(2.0)


async def _rejoin(url: str, deadline: float):
    import websockets

    wait = RETRY_MIN
    while True:
        try:
            return await websockets.connect(url, compression=None, open_timeout=10, max_size=None)
        except (OSError, websockets.InvalidHandshake, TimeoutError):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(wait)
        wait = min(RETRY_MAX, wait * 2)


async def _first_frame(ws) -> int:
    while not isinstance(message := await asyncio.wait_for(ws.recv(), 20), bytes):
        pass
    return int.from_bytes(message[4:8], "little")


async def _caught_up(ws) -> int:
    """Read what is queued until the stream is live (no frame within 20 ms); the last CA step read."""
    step = await _first_frame(ws)
    with contextlib.suppress(TimeoutError):
        while True:
            message = await asyncio.wait_for(ws.recv(), 0.02)
            if isinstance(message, bytes):
                step = int.from_bytes(message[4:8], "little")
    return step


async def one_failover(url: str, n: int, ports: list[int], servers: list[subprocess.Popen], restart) -> dict:
    """n participants; kill -9 the replica that plays the room; seconds until each has a frame again."""
    import httpx
    import websockets

    sockets = [await websockets.connect(url, compression=None, max_size=None) for _ in range(n)]
    try:
        await asyncio.gather(*(_first_frame(ws) for ws in sockets))
        await asyncio.sleep(3.0)  # a snapshot or two
        room_id = url.rsplit("=", 1)[1]
        hosting = [i for i, p in enumerate(ports) if room_id in httpx.get(f"http://127.0.0.1:{p}/health").json()["rooms"]]
        step_before = await _caught_up(sockets[0])
        victim = hosting[0]
        servers[victim].kill()
        killed = time.monotonic()
        servers[victim].wait()

        async def back(ws) -> tuple[float, int]:
            with contextlib.suppress(websockets.ConnectionClosed):  # frames already on their way, then the drop
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            again = await _rejoin(url, time.monotonic() + 60)
            step = await _first_frame(again)
            await again.close()
            return time.monotonic() - killed, step

        results = await asyncio.gather(*(back(ws) for ws in sockets))
    finally:
        for ws in sockets:
            await ws.close()
    restart(victim)
    times = sorted(t for t, _ in results)
    return {"first": times[0], "last": times[-1], "step_before": step_before, "step_after": results[0][1]}


def run_failover(args: argparse.Namespace, redis_url: str, model: str, proxy_port: int, ports: list[int],
                 servers: list[subprocess.Popen], start_server) -> None:
    print("| kill | participants | first back s | last back s | CA step before the kill | first step after |")
    print("|---:|---:|---:|---:|---:|---:|")

    def restart(i: int) -> None:
        servers[i] = start_server(ports[i])
        wait_for_port(ports[i], servers[i])

    for k in range(args.kills):
        url = f"ws://127.0.0.1:{proxy_port}/ws/stream?room={new_room(redis_url, model)}"
        r = asyncio.run(one_failover(url, args.failover_participants, ports, servers, restart))
        print(f"| {k + 1} | {args.failover_participants} | {r['first']:.2f} | {r['last']:.2f} | "
              f"{r['step_before']} | {r['step_after']} |", flush=True)
        time.sleep(11.0)  # the proxy leaves a replica that refused connections out for 10 s (fail_duration)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", default="1,10,30,60,90", help="comma-separated participant counts")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--compression", action="store_true", help="participants negotiate permessage-deflate")
    parser.add_argument("--private", action="store_true", help="also N private streams, for comparison")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=1, help="NCA_STREAM_TORCH_THREADS per replica")
    parser.add_argument("--failover", action="store_true", help="instead: kill -9 the hosting replica, time it")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--failover-participants", type=int, default=5)
    args = parser.parse_args()

    from backend.storage.embedded_redis import free_port, start_redis

    with tempfile.TemporaryDirectory(prefix="bench-rooms-") as tmp:
        models_dir = Path(tmp) / "models"
        models_dir.mkdir()
        model = write_model(models_dir)
        redis = start_redis(data_dir=Path(tmp) / "redis")
        env = {**os.environ, "REDIS_URL": redis.url, "NCA_MODELS_DIR": str(models_dir), "NCA_DEVICE": "cpu",
               "NCA_STREAM_MAX_SESSIONS": "200", "NCA_STREAM_MAX_SESSIONS_PER_CLIENT": "200",
               "NCA_ROOM_MAX_PARTICIPANTS": "200", "NCA_STREAM_TORCH_THREADS": str(args.torch_threads)}

        def start_server(port: int) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "uvicorn", "backend.stream.app:app", "--host", "127.0.0.1",
                                     "--port", str(port), "--log-level", "warning"], cwd=HERE.parent, env=env)

        ports = [free_port() for _ in range(args.replicas)]
        servers = [start_server(port) for port in ports]
        proxy = None
        try:
            for port, server in zip(ports, servers, strict=True):
                wait_for_port(port, server)
            proxy, proxy_port = start_proxy(ports, Path(tmp))
            import torch

            print(f"model {model} 72x72 at 30 fps, 1 step/frame; {args.replicas} stream replicas x "
                  f"{args.torch_threads} torch thread(s) behind the proxy; torch {torch.__version__}; "
                  f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); participants' deflate "
                  f"{'on' if args.compression else 'off'}; load average "
                  f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
            if args.failover:
                run_failover(args, redis.url, model, proxy_port, ports, servers, start_server)
            else:
                run_counts(args, redis.url, model, proxy_port, ports, servers, proxy)
        finally:
            for process in [*([proxy] if proxy else []), *servers]:
                process.terminate()
                process.wait(15)
            redis.stop()


if __name__ == "__main__":
    main()
