"""Frames and commands on the running stream service, with real websockets clients."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np

from tests.stream.client import Frame, watch
from tests.stream.conftest import RANDOM, StreamServer

WHITE_TRANSPARENT = (255, 255, 255, 0)


def test_events_then_seed_frame_with_documented_header(server: StreamServer) -> None:
    async def scenario() -> None:
        async with watch(server.url(RANDOM, fps=30)) as v:
            model = await v.next()
            assert model["type"] == "model" and model["id"] == RANDOM
            assert (model["width"], model["height"]) == (40, 48)  # the grid from the model file
            state = await v.next()
            assert state == {"type": "state", "paused": False, "fps": 30.0, "steps_per_frame": 1, "angle": 0.0,
                             "loop": True}
            seed = await v.next()
            assert isinstance(seed, Frame)
            assert (seed.number, seed.step, seed.width, seed.height, seed.flags) == (0, 0, 40, 48, 0)
            # The seed: one live cell in the centre, RGB 0 composited on white = black, opaque.
            assert tuple(seed.rgba[24, 20]) == (0, 0, 0, 255)
            rest = seed.rgba.reshape(-1, 4).tolist()
            del rest[24 * 40 + 20]
            assert all(tuple(p) == WHITE_TRANSPARENT for p in rest)
            frames = [await v.frame() for _ in range(10)]
            numbers = [f.number for f in frames]
            assert numbers == sorted(numbers) and numbers[0] >= 1
            assert all(f.step == f.number for f in frames)  # one CA step per frame
            assert not np.array_equal(frames[0].rgba, frames[-1].rgba)

    asyncio.run(scenario())


def test_steps_per_frame_and_query_settings(server: StreamServer) -> None:
    async def scenario() -> None:
        async with watch(server.url(RANDOM, fps=20, steps_per_frame=4, angle=-90)) as v:
            state = await v.event("state")
            assert state["steps_per_frame"] == 4 and state["angle"] == 270.0 and state["fps"] == 20.0
            frames = [await v.frame() for _ in range(4)]
            assert all(f.step == 4 * f.number for f in frames), [(f.number, f.step) for f in frames]

    asyncio.run(scenario())


def test_pause_stops_frames_and_step_advances_one(server: StreamServer) -> None:
    async def scenario() -> None:
        async with watch(server.url(RANDOM, fps=30)) as v:
            await v.frame_at_step(5)
            await v.send(cmd="pause")
            assert (await v.event("state"))["paused"] is True
            in_flight = await v.quiet(0.3)  # at most a frame computed before the pause arrived
            assert len(in_flight) <= 2
            assert await v.quiet(0.7) == []
            last = in_flight[-1].step if in_flight else None
            await v.send(cmd="step")
            stepped = await v.frame()
            if last is not None:
                assert stepped.step == last + 1
            await v.send(cmd="step")
            assert (await v.frame()).step == stepped.step + 1
            assert await v.quiet(0.3) == []
            await v.send(cmd="play")
            assert (await v.event("state"))["paused"] is False
            await v.send(cmd="step")  # only while paused
            assert "paused" in (await v.event("error"))["message"]
            assert (await v.frame()).step > stepped.step + 1

    asyncio.run(scenario())


def test_reset_and_seed_edit_the_state(server: StreamServer) -> None:
    async def scenario() -> None:
        async with watch(server.url(RANDOM, fps=30)) as v:
            await v.frame_at_step(10)
            await v.send(cmd="pause")
            await v.event("state")
            await v.quiet(0.3)
            await v.send(cmd="reset")
            reset = await v.frame()
            assert reset.step == 0
            assert tuple(reset.rgba[24, 20]) == (0, 0, 0, 255)
            assert int((reset.rgba[..., 3] > 0).sum()) == 1
            await v.send(cmd="seed", x=3, y=5)
            seeded = await v.frame()
            assert tuple(seeded.rgba[5, 3]) == (0, 0, 0, 255)  # row y, column x
            assert int((seeded.rgba[..., 3] > 0).sum()) == 2

    asyncio.run(scenario())


def test_bad_commands_get_errors_and_the_stream_goes_on(server: StreamServer) -> None:
    bad = [
        ("not json", "malformed JSON"),
        ("[1, 2]", "cmd"),
        ('{"cmd": "fly"}', "unknown command"),
        ('{"cmd": "seed", "x": 40, "y": 0}', "x must be between 0 and 39"),
        ('{"cmd": "seed", "x": 1.5, "y": 0}', "x must be an integer"),
        ('{"cmd": "erase", "x": 10, "y": 10}', "r must be a number"),
        ('{"cmd": "speed", "fps": 0}', "fps must be between 1 and 60"),
        ('{"cmd": "speed", "steps_per_frame": 17}', "steps_per_frame must be between 1 and 16"),
        ('{"cmd": "rotate", "angle": "left"}', "angle must be a finite number"),
        ('{"cmd": "rotate", "angle": 1e999}', "angle must be"),  # JSON Infinity
        ("[" * 1000, "nested too deeply"),  # short, but deeper than the JSON parser recurses
        ('{"cmd": "erase", "x": 1%s, "y": 0, "r": 1}' % ("0" * 400), "x must be between 0 and 40"),  # > float
        ('{"cmd": "rotate", "angle": 1%s}' % ("0" * 400), "angle must be a finite number"),
        ('{"cmd": "pause", "pad": "' + "é" * 600 + '"}', "command too long"),  # 626 characters, 1226 bytes
    ]

    async def scenario() -> None:
        async with watch(server.url(RANDOM, fps=30)) as v:
            await v.frame()
            for text, expected in bad:
                v.events.clear()
                await v.ws.send(text)
                error = await v.event("error")
                assert expected in error["message"], (text, error)
            await v.ws.send(b"\x00\x01")
            assert "JSON text" in (await v.event("error"))["message"]
            before = (await v.frame()).step
            assert (await v.frame_at_step(before + 5)).step >= before + 5  # still streaming

    asyncio.run(scenario())


def test_speed_changes_the_frame_rate(server: StreamServer) -> None:
    async def scenario() -> None:
        async with watch(server.url(RANDOM, fps=5)) as v:
            await v.frame()
            slow = len(await v.quiet(1.0))
            await v.send(cmd="speed", fps=40, steps_per_frame=2)
            state = await v.event("state")
            assert (state["fps"], state["steps_per_frame"]) == (40.0, 2)
            await v.quiet(0.2)
            fast = await v.quiet(1.0)
            assert slow <= 7 and len(fast) >= 15, (slow, len(fast))  # 5 vs 40 fps, lenient for a busy machine
            assert fast[-1].step - fast[0].step == 2 * (fast[-1].number - fast[0].number)

    asyncio.run(scenario())


def test_health(server: StreamServer) -> None:
    health = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5).json()
    assert health["status"] == "ok" and health["device"] == "cpu" and health["max_sessions"] == 16
    assert health["checkpoints"] == "subscribed"


def test_viewers_of_one_model_share_each_tick(server: StreamServer) -> None:
    """Three viewers joining at different moments fall into step: one batched step per tick, not three."""

    async def scenario() -> None:
        url = server.url(RANDOM, fps=20)
        async with watch(url) as a:
            await a.frame()
            await asyncio.sleep(0.03)
            async with watch(url) as b:
                await b.frame()
                await asyncio.sleep(0.02)
                async with watch(url) as c:
                    await c.frame()
                    await asyncio.sleep(0.3)  # a tick or two to align
                    ticks_before = (await asyncio.to_thread(server.health))["ticks"]
                    counts = await asyncio.gather(*(v.quiet(2.0) for v in (a, b, c)))
                    ticks = (await asyncio.to_thread(server.health))["ticks"] - ticks_before
        frames = [len(f) for f in counts]
        assert min(frames) >= 25, frames  # 20 fps each, lenient for a busy machine
        assert ticks <= 1.3 * max(frames) + 2, (ticks, frames)  # unbatched would be about sum(frames)

    asyncio.run(scenario())
