"""Refusals and timeouts, each with its documented close code; slow clients don't hold others back."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest
import websockets

from backend.storage.connection import connect
from backend.storage.embedded_redis import EmbeddedRedis
from backend.storage.jobs import job_key
from backend.stream import protocol
from tests.stream.client import watch
from tests.stream.conftest import RANDOM, StreamServer


def wait_for_sessions(server: StreamServer, count: int, timeout: float = 10.0) -> float:
    """Seconds until /health reports `count` sessions."""
    start = time.monotonic()
    while (sessions := server.health()["sessions"]) != count:
        assert time.monotonic() - start < timeout, f"{sessions} sessions, expected {count}"
        time.sleep(0.05)
    return time.monotonic() - start


async def refused(url: str) -> tuple[str, int, str]:
    """The error event and the close frame a refused stream gets."""
    async with watch(url) as v:
        error = await v.event("error")
        close = await v.closed()
    return error["message"], close.code, close.reason


def test_unknown_model_is_closed_with_4404(server: StreamServer) -> None:
    message, code, reason = asyncio.run(refused(server.url("example-nope")))
    assert code == protocol.CLOSE_UNKNOWN_MODEL == 4404
    assert "unknown model 'example-nope'" in message and reason == message
    message, code, _ = asyncio.run(refused(server.url("0123456789abcdef0123456789abcdef")))  # a job id, no job
    assert code == 4404


def test_a_model_the_store_cannot_describe_is_closed_with_1011(server: StreamServer,
                                                               redis_server: EmbeddedRedis) -> None:
    client = connect(redis_server.url)
    job_id = uuid.uuid4().hex
    try:
        client.hset(job_key(job_id), "model_version", "garbled")  # a job whose checkpoint version is unreadable
        message, code, reason = asyncio.run(refused(server.url(job_id)))
    finally:
        client.delete(job_key(job_id))
        client.close()
    assert code == protocol.CLOSE_SERVER_ERROR == 1011
    assert f"model '{job_id}' could not be loaded" in message and reason == message


@pytest.mark.parametrize(("query", "expected"), [
    ("fps=30", "model query parameter is required"),
    ("model=example-random&fps=0", "fps must be between 1 and 60"),
    ("model=example-random&fps=fast", "fps must be a number"),
    ("model=example-random&steps_per_frame=2.5", "steps_per_frame must be an integer"),
    ("model=example-random&steps_per_frame=17", "steps_per_frame must be between 1 and 16"),
    ("model=example-random&angle=nan", "angle must be a finite number"),
    ("model=example-random&on_checkpoint=restart", "on_checkpoint must be one of regrow, keep, got 'restart'"),
    ("model=example-random&on_checkpoint=", "on_checkpoint must be one of regrow, keep"),
])
def test_bad_query_parameters_are_closed_with_4400(server: StreamServer, query: str, expected: str) -> None:
    message, code, _ = asyncio.run(refused(f"ws://127.0.0.1:{server.port}/ws/stream?{query}"))
    assert code == protocol.CLOSE_BAD_REQUEST == 4400
    assert expected in message


def test_max_concurrent_streams_closes_with_1013(limited_server: StreamServer) -> None:
    wait_for_sessions(limited_server, 0)

    async def scenario() -> None:
        url = limited_server.url(RANDOM)
        async with watch(url) as a, watch(url) as b:
            await a.frame()
            await b.frame()
            message, code, _ = await refused(url)
            assert code == protocol.CLOSE_TRY_AGAIN_LATER == 1013
            assert "too many streams (max 2)" in message
            await a.frame()  # the others play on
        wait_for_sessions(limited_server, 0)
        async with watch(url) as c:  # a freed slot can be taken again
            await c.frame()

    asyncio.run(scenario())


def test_idle_stream_ends_with_4408_but_an_active_one_stays(limited_server: StreamServer) -> None:
    wait_for_sessions(limited_server, 0)

    async def keep_busy(v, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await v.send(cmd="play")
            await v.quiet(0.4)

    async def scenario() -> None:
        url = limited_server.url(RANDOM, fps=10)
        async with watch(url) as idle, watch(url) as busy:
            start = time.monotonic()
            close, _ = await asyncio.gather(idle.closed(timeout=6), keep_busy(busy, 3.0))
            assert close.code == protocol.CLOSE_IDLE == 4408 and "idle" in close.reason
            assert time.monotonic() - start > 1.4
            assert (await busy.frame()).number > 0  # still playing after the idle one was closed

    asyncio.run(scenario())


def test_a_client_that_stops_reading_neither_slows_others_nor_stays(server: StreamServer) -> None:
    wait_for_sessions(server, 0)
    dropped_before = server.health()["frames_dropped"]

    async def scenario() -> None:
        # A tiny receive buffer and a one-message queue: the slow client stops taking frames almost at once
        # (at 60 fps, so that the buffers it may fill are full within seconds).
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        async with websockets.connect(server.url(RANDOM, fps=60), sock=sock, max_queue=1, compression=None,
                                      close_timeout=0.5), \
                watch(server.url(RANDOM, fps=15)) as fast:
            await fast.frame()
            await asyncio.to_thread(wait_for_sessions, server, 2)
            start = time.monotonic()
            arrivals = []
            while time.monotonic() - start < 3.0:
                await fast.frame()
                arrivals.append(time.monotonic())
            gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
            fps = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
            # Waiting on the stalled client would stop frames for seconds; lenient bounds keep this
            # test meaningful on a loaded 2-core machine (the benchmark measures the real rates).
            assert fps > 10, f"the fast client got {fps:.1f} fps of 15 next to a stalled one"
            assert max(gaps) < 1.0, f"a {max(gaps) * 1000:.0f} ms gap next to a stalled client"
            reading = asyncio.create_task(fast.quiet(30.0))  # the fast client keeps up from here on
            # Once the buffers it may fill are full, its frames are replaced, not queued...
            deadline = time.monotonic() + 10.0
            while (await asyncio.to_thread(server.health))["frames_dropped"] == dropped_before:
                assert time.monotonic() < deadline, "the stalled client's frames were never dropped"
                await asyncio.sleep(0.05)
            # ...and it is dropped after the stall timeout (2 s) plus the time to fill the buffers that are
            # allowed to hold its frames (256 KiB socket send buffer, 64 KiB transport buffer).
            assert await asyncio.to_thread(wait_for_sessions, server, 1, 15.0) < 15.0
            reading.cancel()

    asyncio.run(scenario())


def test_a_text_message_that_is_not_utf8_is_closed_with_1007_and_one_log_line(server: StreamServer) -> None:
    """uvicorn closes it (rightly) before the app sees it; its ERROR traceback would let any client fill the log."""
    logged_before = server.log.stat().st_size

    async def scenario() -> int:
        async with watch(server.url(RANDOM)) as v:
            await v.event("model")
            await v.ws.send(b"\xff\xfe{", text=True)  # a text frame whose bytes are not UTF-8
            return (await v.closed()).code

    assert asyncio.run(scenario()) == protocol.CLOSE_INVALID_TEXT == 1007
    for _ in range(50):  # the log line may land a moment after the close
        with server.log.open("rb") as log:
            log.seek(logged_before)
            lines = log.read().decode(errors="replace").splitlines()
        said = [line for line in lines if "UTF-8" in line]
        if said:
            break
        time.sleep(0.05)
    assert len(said) == 1 and said[0].startswith("INFO:"), said
    assert not [line for line in lines if "Traceback" in line or line.startswith("ERROR")], lines
