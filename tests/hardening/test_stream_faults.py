"""The stream service under faults: restarted under its viewers, and stalled clients next to a live one."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import Callable

import psutil
import websockets

from backend.storage.embedded_redis import free_port
from tests.hardening.conftest import STILL_MODEL, STILL_SIZE, Service
from tests.stream.client import Viewer, watch

RECONNECT_DEADLINE = 60.0  # seconds a viewer keeps trying (the service restarts in a few)


async def reconnect(url: str) -> tuple[Viewer, websockets.ClientConnection, int]:
    """Connect with backoff, as a browser tab would; (viewer, its connection, failed attempts)."""
    attempts, delay, deadline = 0, 0.1, time.monotonic() + RECONNECT_DEADLINE
    while True:
        try:
            ws = await websockets.connect(url, compression=None, close_timeout=1)
            return Viewer(ws), ws, attempts
        except (OSError, websockets.InvalidHandshake):
            attempts += 1
            assert time.monotonic() < deadline, "the stream service did not come back"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def test_viewers_reconnect_after_a_stream_restart_and_go_on(stream_service) -> None:
    service: Service = stream_service(port=free_port())

    async def scenario() -> tuple[float, int, int | None]:
        async with watch(service.url(fps=20)) as viewer:
            first = await viewer.frame()
            assert (await viewer.frame_at_step(first.step + 5)).step > first.step
            restart = asyncio.create_task(asyncio.to_thread(lambda: (service.stop(), service.start())))
            try:
                while True:
                    await viewer.next()
            except websockets.ConnectionClosed as closed:
                close_code = closed.rcvd.code if closed.rcvd else None
            down = time.monotonic()
        again, ws, attempts = await reconnect(service.url(fps=20))
        try:
            gap = time.monotonic() - down
            assert (await again.event("model"))["id"] == "example-random"
            frame = await again.frame(timeout=10)
            assert (await again.frame_at_step(frame.step + 5)).step >= frame.step + 5  # it plays on
            await again.send(cmd="pause")
            assert (await again.event("state"))["paused"] is True  # and takes commands
        finally:
            await ws.close()
        await restart
        return gap, attempts, close_code

    gap, attempts, close_code = asyncio.run(scenario())
    assert close_code in (1001, 1012, None), close_code  # going away / service restart
    print(f"stream back after {gap:.1f} s, {attempts} refused reconnects, close code {close_code}")


def stalled_socket(service: Service) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", service.port))
    return sock


async def frame_rate(viewer: Viewer, seconds: float, every: float = 0.5,
                     sample: Callable[[], float] | None = None) -> tuple[float, float, list[tuple[float, float]]]:
    """(frames per second, worst gap in seconds, [(time, sample())] every `every` s) over `seconds` of frames."""
    await viewer.frame()
    arrivals, samples = [time.monotonic()], []
    while arrivals[-1] - arrivals[0] < seconds:
        await viewer.frame()
        arrivals.append(time.monotonic())
        if sample is not None and (not samples or arrivals[-1] - samples[-1][0] >= every):
            samples.append((arrivals[-1], sample()))
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), max(gaps), samples


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    mx, my = statistics.fmean(x for x, _ in points), statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def test_stalled_viewers_keep_memory_bounded_and_others_at_full_rate(stream_service) -> None:
    # A long stall timeout keeps the stalled clients connected for the whole measurement.
    service: Service = stream_service(stream_stall_timeout=60, stream_max_sessions_per_client=16)
    process = psutil.Process(service.process.pid)
    stalled_count, fps, frame_mib = 8, 30, (STILL_SIZE * STILL_SIZE * 4 + 16) / 2**20

    def rss_mib() -> float:
        return process.memory_info().rss / 2**20

    async def scenario() -> dict:
        async with watch(service.url(STILL_MODEL, fps=fps)) as live:
            alone, _, before = await frame_rate(live, 2.0, sample=rss_mib)
            stalled = []
            for _ in range(stalled_count):  # they never read a byte
                stalled.append(await websockets.connect(service.url(STILL_MODEL, fps=fps), sock=stalled_socket(service),
                                                        max_queue=1, compression=None))
            await frame_rate(live, 3.0)  # buffers fill, allocations settle (the live one keeps reading)
            beside, worst_gap, during = await frame_rate(live, 6.0, sample=rss_mib)
            assert service.health()["sessions"] == stalled_count + 1  # all still connected
            for ws in stalled:
                ws.transport.abort()
        return {"alone": alone, "beside": beside, "worst_gap_ms": worst_gap * 1000,
                "rss_alone": max(r for _, r in before), "rss_peak": max(r for _, r in during),
                "rss_growth": during[-1][1] - during[0][1], "seconds": during[-1][0] - during[0][0],
                "rss_slope": slope(during)}

    m = asyncio.run(scenario())
    unbounded = stalled_count * fps * frame_mib  # MiB/s if every frame for a stalled viewer were kept
    print(f"live viewer {m['alone']:.1f} fps alone, {m['beside']:.1f} fps beside {stalled_count} stalled "
          f"(worst gap {m['worst_gap_ms']:.0f} ms); stream RSS {m['rss_alone']:.1f} MiB alone, peak "
          f"{m['rss_peak']:.1f} MiB beside them, trend {m['rss_slope']:+.2f} MiB/s (unbounded: {unbounded:.1f})")
    # Bounded: flat while they stay stalled (the step up from "alone" is the 8 more sessions' CA states
    # and batch buffers, paid whether they read or not).
    assert m["rss_slope"] < unbounded / 5, m
    assert m["rss_growth"] < unbounded * m["seconds"] / 5, m
    assert m["beside"] > 0.8 * m["alone"], m
