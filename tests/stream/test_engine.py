"""The engine in-process (no sockets): the ticker's plan against a checkpoint swapped in under it.

The models are real model files read through `fetch`, as the service reads them from the catalog.
"""

from __future__ import annotations

import asyncio

import torch

from backend.nca import modelfile
from backend.stream.engine import Engine
from backend.stream.protocol import HEADER, Command, StreamParams
from backend.stream.sessions import Session
from tests.stream.conftest import random_model


class Store:
    """What the catalog holds for one model id: the latest model file and its version."""

    def __init__(self, height: int, width: int) -> None:
        self.version = 0
        self.put(height, width)

    def put(self, height: int, width: int) -> None:
        self.data = modelfile.to_bytes(random_model(self.version, height=height, width=width))
        self.version += 1

    def fetch(self, model_id: str) -> tuple[bytes, int]:
        return self.data, self.version


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
        plan = engine._plan(session.next_due)
        store.put(20, 24)
        assert await engine.reload("m", store.version)  # between planning and computing
        [(batch, frames)] = engine._compute(plan)
        assert batch.shape == (1, 16, 48, 40)
        assert HEADER.unpack_from(frames[0].tobytes())[2:4] == (40, 48)

    asyncio.run(scenario())
