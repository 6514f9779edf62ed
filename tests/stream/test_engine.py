"""The engine in-process (no sockets): checkpoints swapped in under the ticker or a load, model registration,
a failing model, when speed and play take effect, and the frame clock.

The models are real model files read through `fetch`, as the service reads them from the catalog.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from backend.nca import modelfile
from backend.stream.engine import Engine, StreamsFull
from backend.stream.protocol import HEADER, Command, StreamParams
from backend.stream.sessions import FrameClock, Session
from tests.stream.conftest import random_model


class Store:
    """What the catalog holds for one model id: the latest model file, its version and the job's status."""

    def __init__(self, height: int, width: int) -> None:
        self.version = 0
        self.status = "running"
        self.put(height, width)

    def put(self, height: int, width: int) -> None:
        self.data = modelfile.to_bytes(random_model(self.version, height=height, width=width))
        self.version += 1

    def fetch(self, model_id: str) -> tuple[bytes, int, str]:
        return self.data, self.version, self.status


async def next_frame(session: Session, timeout: float = 10.0) -> tuple[int, int, int, int]:
    """(frame number, step, width, height) of the session's next frame; events are skipped."""
    while isinstance(message := await asyncio.wait_for(session.next_message(), timeout), str):
        pass
    return HEADER.unpack_from(message)[:4]


def test_edits_for_the_old_grid_are_dropped_when_a_checkpoint_resizes_it() -> None:
    """A seed at the old grid's corner, then a smaller checkpoint: the paused viewer gets the new seed."""

    async def scenario() -> None:
        store = Store(48, 40)
        engine = Engine(store.fetch, torch.device("cpu"), max_sessions=4)
        session = await engine.open(StreamParams("m"))
        session.apply(Command("pause"))
        session.apply(Command("seed", x=39, y=47))  # valid on 40 x 48, outside 24 x 20
        store.put(20, 24)
        assert await engine.reload("m", store.version)
        ticker = asyncio.create_task(engine.run())
        try:
            number, step, width, height = await next_frame(session)
        finally:
            ticker.cancel()
        assert (step, width, height) == (0, 24, 20)
        assert session.state.shape == (1, 16, 20, 24)
        assert int((session.state[0, 3] > 0).sum()) == 1  # the seed's centre cell only

    asyncio.run(scenario())


def test_a_plan_keeps_the_grid_it_was_made_for() -> None:
    """A checkpoint swapped in while a tick computes changes the next tick, not this one."""

    async def scenario() -> None:
        store = Store(48, 40)
        engine = Engine(store.fetch, torch.device("cpu"), max_sessions=4)
        session = await engine.open(StreamParams("m"))
        plan = engine._plan(session.clock.next_due)
        store.put(20, 24)
        assert await engine.reload("m", store.version)  # between planning and computing
        [(batch, frames)] = engine._compute(plan)
        assert batch.shape == (1, 16, 48, 40)
        assert HEADER.unpack_from(frames[0])[2:4] == (40, 48)

    asyncio.run(scenario())


class Catalog:
    """Several model ids; `hold` makes the next fetch wait (after reading) until `release`."""

    def __init__(self) -> None:
        self.stores: dict[str, Store] = {}
        self.held = threading.Event()
        self.released = threading.Event()
        self.released.set()

    def fetch(self, model_id: str) -> tuple[bytes, int, str]:
        result = self.stores[model_id].fetch(model_id)
        if not self.released.is_set():
            self.held.set()
            self.released.wait(10)
        return result

    def hold(self) -> None:
        self.held.clear()
        self.released.clear()


def test_a_model_is_registered_with_its_first_viewer_only() -> None:
    async def scenario() -> None:
        catalog = Catalog()
        catalog.stores = {"a": Store(48, 40), "b": Store(20, 24)}
        engine = Engine(catalog.fetch, torch.device("cpu"), max_sessions=1)
        # Both pass the first capacity check and load; the one that loses the race keeps no model loaded.
        opened = await asyncio.gather(engine.open(StreamParams("a")), engine.open(StreamParams("b")),
                                      return_exceptions=True)
        [session] = [s for s in opened if isinstance(s, Session)]
        assert [type(s) for s in opened if not isinstance(s, Session)] == [StreamsFull]
        assert set(engine.models) == {session.model.id}
        engine.close(session)
        assert engine.models == {}

        # Two viewers wait for one load; the first comes and goes before the second resumes.
        async def come_and_go() -> None:
            engine.close(await engine.open(StreamParams("a")))

        _, stays = await asyncio.gather(come_and_go(), engine.open(StreamParams("a")))
        assert engine.models == {"a": stays.model}  # so hot-swaps still reach it

    asyncio.run(scenario())


def test_a_checkpoint_announced_while_the_model_loads_is_not_missed() -> None:
    async def scenario() -> None:
        catalog = Catalog()
        catalog.stores = {"m": Store(48, 40)}
        engine = Engine(catalog.fetch, torch.device("cpu"), max_sessions=4)
        catalog.hold()
        opening = asyncio.create_task(engine.open(StreamParams("m")))
        assert await asyncio.to_thread(catalog.held.wait, 10)  # the viewer's load has read version 1
        catalog.stores["m"].put(48, 40)
        reloading = asyncio.create_task(engine.reload("m", 2))
        await asyncio.sleep(0.05)
        catalog.released.set()
        session = await opening
        assert await reloading
        assert session.model.version == 2 and engine.models["m"] is session.model

    asyncio.run(scenario())


def test_a_model_that_fails_to_step_stops_only_its_own_viewers() -> None:
    async def scenario() -> None:
        catalog = Catalog()
        catalog.stores = {"good": Store(48, 40), "broken": Store(48, 40)}
        engine = Engine(catalog.fetch, torch.device("cpu"), max_sessions=4)
        good = await engine.open(StreamParams("good", fps=30))
        broken = await engine.open(StreamParams("broken", fps=30))  # due with `good`: the same ticks
        with torch.no_grad():  # weights of the wrong shape: every step raises
            broken.model.model.hidden_to_update.weight = torch.nn.Parameter(torch.zeros(3, 3, 1, 1))
        ticker = asyncio.create_task(engine.run())
        try:
            steps = [(await next_frame(good))[1] for _ in range(4)]
        finally:
            ticker.cancel()
        assert steps == [0, 1, 2, 3], steps
        assert broken.step == 0

    asyncio.run(scenario())


async def arrivals(session: Session, count: int) -> list[float]:
    """Arrival times of the session's next `count` frames."""
    times = []
    for _ in range(count):
        await next_frame(session)
        times.append(time.monotonic())
    return times


def test_a_faster_speed_and_play_take_effect_at_once() -> None:
    async def scenario() -> None:
        engine = Engine(Store(48, 40).fetch, torch.device("cpu"), max_sessions=4)
        session = await engine.open(StreamParams("m", fps=1))
        ticker = asyncio.create_task(engine.run())
        try:
            await next_frame(session)  # the seed; the next frame is due in 1 s
            session.apply(Command("speed", fps=50))
            engine.wake()
            asked = time.monotonic()
            assert (await arrivals(session, 1))[0] - asked < 0.5  # not the 1 s the old rate had left

            session.apply(Command("pause"))
            await asyncio.sleep(0.6)  # frames that would have come meanwhile are not owed
            session.events.clear()
            session.latest_frame = None
            session.apply(Command("speed", fps=5))
            session.apply(Command("play"))
            engine.wake()
            first, second = await arrivals(session, 2)
            assert second - first > 0.1, "frames missed while paused were made up in a burst"
        finally:
            ticker.cancel()

    asyncio.run(scenario())


def test_a_tick_computed_before_a_regrow_is_never_shown() -> None:
    """A checkpoint swapped in while a tick computes: a regrowing viewer drops that tick's frame (the old
    weights' cells) and its next frame is the new weights' first step from the seed; a keeping one shows it."""

    async def scenario() -> None:
        store = Store(48, 40)
        engine = Engine(store.fetch, torch.device("cpu"), max_sessions=4)
        regrows = await engine.open(StreamParams("m"))
        keeps = await engine.open(StreamParams("m", on_checkpoint="keep"))
        engine._deliver(plan := engine._plan(regrows.clock.next_due), engine._compute(plan))  # the seed frames
        for session in (regrows, keeps):
            await session.next_message()  # `model` was not sent here: the outbox holds just the frame
        now = max(regrows.clock.next_due, keeps.clock.next_due)
        for _ in range(3):  # a few steps in
            engine._deliver(plan := engine._plan(now), engine._compute(plan))
            now += 1.0 / regrows.fps
        regrows.latest_frame = keeps.latest_frame = None
        frame, step = regrows.frame, regrows.step
        assert step == 3

        plan = engine._plan(now)  # planned with the old weights...
        store.put(48, 40)
        assert await engine.reload("m", store.version)  # ...swapped while it computes
        engine._deliver(plan, engine._compute(plan))
        assert regrows.latest_frame is None and (regrows.frame, regrows.step) == (frame, step)
        assert keeps.latest_frame is not None and keeps.step == step + 1

        [group] = engine._plan(now + 1.0 / regrows.fps)
        [work] = [w for w in group.work if w.session is regrows]
        assert [e.cmd for e in work.edits] == ["regrow"] and work.header == (frame, 1)  # no frame number skipped

    asyncio.run(scenario())


def test_the_frame_clock_alone_moves_a_viewers_due_time() -> None:
    clock = FrameClock(10.0, now=100.0)
    assert clock.next_due == pytest.approx(100.1) and not clock.owed(100.0)
    assert not clock.take(100.0)  # more than half a period early: not in this tick
    assert clock.take(100.06)  # less than half a period early: comes along, in this tick's phase from now on
    assert clock.next_due == pytest.approx(100.16)
    assert clock.owed(100.16) and clock.take(100.16) and clock.next_due == pytest.approx(100.26)  # on time
    assert clock.take(101.0) and clock.next_due == pytest.approx(100.9)  # late: made up once, not all
    clock.set_fps(1.0, now=101.0)  # slower: the frame already due stays due
    assert clock.next_due == pytest.approx(100.9)
    clock.next_due = 105.0
    clock.set_fps(2.0, now=101.0)  # faster: within one new period
    assert clock.next_due == pytest.approx(101.5)
    clock.resume(now=103.0)
    assert clock.owed(103.0)
