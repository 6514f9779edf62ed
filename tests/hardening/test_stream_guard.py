"""Stream abuse limits (origin, streams per client, message size, command rate) and command-channel fuzzing.

Every refusal or close carries a documented code (docs/stream-protocol.md); the service never crashes:
it still answers /health and plays new streams afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time

import pytest
import websockets

from backend.config import Settings
from backend.stream import guard, protocol
from backend.stream.protocol import CLOSE_TRY_AGAIN_LATER
from tests.hardening.conftest import Service
from tests.stream.client import Frame, watch

LIMITS = {"stream_max_sessions_per_client": 3, "stream_command_rate": 200, "stream_command_burst": 100,
          "stream_max_message_bytes": 4096, "stream_max_sessions": 16}
ALLOWED_CLOSES = {1000, protocol.CLOSE_POLICY_VIOLATION, protocol.CLOSE_MESSAGE_TOO_BIG}


@pytest.fixture(scope="module")
def guarded(stream_service) -> Service:
    return stream_service(**LIMITS)


def wait_for_sessions(service: Service, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while service.health()["sessions"] != count:
        assert time.monotonic() < deadline, f"{service.health()['sessions']} sessions, expected {count}"
        time.sleep(0.05)


async def refusal(url: str, **kwargs: object) -> tuple[str, int, str]:
    async with watch(url, **kwargs) as v:
        error = await v.event("error")
        close = await v.closed()
    return error["message"], close.code, close.reason


async def still_serving(service: Service) -> None:
    """The process lives, /health answers and a new stream plays."""
    assert service.alive, "the stream service died"
    assert (await asyncio.to_thread(service.health))["status"] == "ok"
    async with watch(service.url()) as v:
        first = await v.frame()
        assert (await v.frame()).number > first.number


def test_origin_policy() -> None:
    default = Settings()
    assert guard.origin_allowed(None, "nca.example.com:8001", default)  # not a browser
    assert guard.origin_allowed("http://nca.example.com:8000", "nca.example.com:8001", default)  # the page's host
    assert guard.origin_allowed("http://localhost:5173", "10.0.0.5:8001", default)
    assert not guard.origin_allowed("https://evil.example", "nca.example.com:8001", default)
    assert not guard.origin_allowed("null", "nca.example.com:8001", default)
    proxied = Settings(public_stream_url="wss://stream.example.com")
    assert guard.origin_allowed("https://stream.example.com", "10.0.0.5:8001", proxied)
    listed = Settings(stream_allowed_origins="https://app.example.com, https://b.example.com/")
    assert guard.origin_allowed("https://b.example.com", "x:8001", listed)
    assert not guard.origin_allowed("http://localhost:8000", "localhost:8001", listed)  # the list replaces the default
    assert guard.origin_allowed("https://any.example", "x:8001", Settings(stream_allowed_origins="*"))


def test_foreign_origin_is_closed_with_4403(guarded: Service) -> None:
    async def scenario() -> None:
        message, code, _ = await refusal(guarded.url(), origin="https://evil.example")
        assert code == protocol.CLOSE_FORBIDDEN_ORIGIN == 4403 and "may not open streams" in message
        async with watch(guarded.url(), origin=f"http://127.0.0.1:{guarded.port - 1}") as v:  # same host
            await v.frame()

    asyncio.run(scenario())


def test_streams_per_client_are_capped_with_1013(guarded: Service) -> None:
    wait_for_sessions(guarded, 0)

    async def scenario() -> None:
        async with watch(guarded.url()) as a, watch(guarded.url()) as b, watch(guarded.url()) as c:
            for v in (a, b, c):
                await v.frame()
            message, code, _ = await refusal(guarded.url())
            assert code == CLOSE_TRY_AGAIN_LATER and "too many streams from your address (max 3)" in message
            await a.frame()
        await asyncio.to_thread(wait_for_sessions, guarded, 0)
        async with watch(guarded.url()) as d:  # slots come back when streams end
            await d.frame()

    asyncio.run(scenario())


def test_streams_per_client_cap_holds_for_connections_that_arrive_together(guarded: Service) -> None:
    """All of them pass the check before the model is loaded; only the cap's worth may play."""
    wait_for_sessions(guarded, 0)  # the model is not loaded: every connection waits for its load

    async def outcome(url: str) -> str:
        async with watch(url) as v:
            try:
                await v.frame()
                await v.frame()  # still playing once all the others have got their answer
                return "played"
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd is not None, closed
                return str(closed.rcvd.code)

    async def scenario() -> list[str]:
        return sorted(await asyncio.gather(*(outcome(guarded.url(fps=5)) for _ in range(8))))

    outcomes = asyncio.run(scenario())
    assert outcomes == ["1013"] * 5 + ["played"] * 3, outcomes
    wait_for_sessions(guarded, 0)


def test_message_size_cap(guarded: Service) -> None:
    async def scenario() -> None:
        async with watch(guarded.url()) as v:
            await v.frame()
            await v.ws.send(json.dumps({"cmd": "pause", "pad": "x" * 2000}))  # over the command limit: an error
            assert "command too long" in (await v.event("error"))["message"]
            await v.send(cmd="play")
            assert (await v.event("state"))["paused"] is False
            await v.ws.send("x" * 100_000)  # over stream_max_message_bytes: closed by the parser
            close = await v.closed()
            assert close.code == protocol.CLOSE_MESSAGE_TOO_BIG == 1009 and "4096" in close.reason
        await still_serving(guarded)

    asyncio.run(scenario())


def test_command_rate_cap_then_flood_close(guarded: Service) -> None:
    async def scenario() -> None:
        async with watch(guarded.url()) as v:
            await v.frame()
            for _ in range(130):  # a burst of 100 passes, the rest are ignored with an error event
                await v.ws.send('{"cmd": "play"}')
            error = await v.event("error")
            assert "too many commands (at most 200 per second)" in error["message"]
            await asyncio.sleep(0.6)  # the bucket refills: commands work again, the stream plays on
            v.events.clear()  # the state replies to the accepted `play`s may still be arriving
            await v.send(cmd="pause")
            while (await v.event("state"))["paused"] is not True:
                pass  # a late reply to a `play`; the pause reply follows (or event() times out)
        async with watch(guarded.url()) as flood:
            await flood.frame()
            for _ in range(2000):
                await flood.ws.send('{"cmd": "step"}')
            close = await flood.closed()
            assert close.code == protocol.CLOSE_POLICY_VIOLATION == 1008 and "command flood" in close.reason
        await still_serving(guarded)

    asyncio.run(scenario())


def fuzz_messages(rng: random.Random, count: int) -> list[str | bytes]:
    """Malformed JSON, wrong types, odd values (10**400: no float holds it), valid commands out of range, binary
    and random bytes."""
    words = ["cmd", "x", "y", "r", "fps", "steps_per_frame", "angle", "reset", "seed", "erase", "pause", "play",
             "speed", "rotate", "step", "", "null", "__proto__"]
    values = [None, True, False, 0, -1, 1, 2**31, -(2**63), 10**400, 1e308, -1e-308, 0.5, "", "NaN", [], {}, [1, 2],
              {"cmd": "seed"}, "x" * 50, "\u202e\u0000\udbff"[:2]]
    out: list[str | bytes] = []
    for _ in range(count):
        kind = rng.randrange(8)
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(0, 600)))
        elif kind == 1:
            out.append("".join(rng.choice('{}[]":,0123456789.eE-+ truefalsnul\\') for _ in range(rng.randrange(60))))
        elif kind == 2:
            out.append("[" * rng.randrange(1, 600) + "]" * rng.randrange(1, 600))
        elif kind == 3:
            out.append(json.dumps(rng.choice(values)))
        elif kind == 4:
            out.append("NaN" if rng.random() < 0.5 else '{"cmd": "erase", "x": NaN, "y": Infinity, "r": -Infinity}')
        else:
            command = {"cmd": rng.choice(words[7:15] + [rng.choice(words)])}
            for key in rng.sample(words[:7], rng.randrange(0, 5)):
                command[key] = rng.choice(values + [rng.uniform(-1e6, 1e6), rng.randrange(-100, 100)])
            out.append(json.dumps(command))
    return out


def test_fuzzing_the_command_channel_never_crashes_the_service(guarded: Service) -> None:
    rng = random.Random(8)
    messages = fuzz_messages(rng, int(os.environ.get("NCA_FUZZ_MESSAGES", "450")))

    async def scenario() -> dict[str, int]:
        seen = {"error events": 0, "other events": 0, "frames": 0, "closes": 0}
        for start in range(0, len(messages), 90):  # fresh streams; each batch fits the command burst
            async with watch(guarded.url()) as v:
                await v.frame()
                try:
                    for message in messages[start:start + 90]:
                        await v.ws.send(message)
                    await v.ws.send(json.dumps({"cmd": "rotate", "angle": 123}))  # still answers after the batch
                    while not (isinstance(item := await v.next(), dict) and item.get("angle") == 123):
                        if isinstance(item, Frame):
                            seen["frames"] += 1
                        else:
                            seen["error events" if item["type"] == "error" else "other events"] += 1
                except websockets.ConnectionClosed as closed:
                    assert closed.rcvd is not None and closed.rcvd.code in ALLOWED_CLOSES, closed
                    seen["closes"] += 1
        return seen

    seen = asyncio.run(scenario())
    print(f"stream fuzz: {len(messages)} messages on {len(range(0, len(messages), 90))} streams: {seen}")
    assert seen["error events"] > len(messages) // 2, seen  # the bad ones were answered with error events
    asyncio.run(still_serving(guarded))
    assert "Traceback" not in guarded.log.read_text(), guarded.log.read_text()[-3000:]

