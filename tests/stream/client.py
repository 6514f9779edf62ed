"""A real websockets client for the tests: frames decoded with the documented header, events parsed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import websockets

from backend.stream.protocol import HEADER


@dataclass
class Frame:
    number: int
    step: int
    width: int
    height: int
    flags: int
    rgba: np.ndarray  # (H, W, 4) uint8

    @property
    def coverage(self) -> float:
        """Share of cells that are visibly alive (alpha > 0.1)."""
        return float((self.rgba[..., 3] > 25).mean())


def decode(message: bytes) -> Frame:
    number, step, width, height, flags = HEADER.unpack_from(message)
    assert len(message) == HEADER.size + width * height * 4, "frame size does not match its header"
    return Frame(number, step, width, height, flags, np.frombuffer(message, np.uint8, offset=HEADER.size)
                 .reshape(height, width, 4))


@dataclass
class Viewer:
    """A real websockets client that sorts what arrives into frames and JSON events."""

    ws: websockets.ClientConnection
    events: list[dict] = field(default_factory=list)
    last_frame: Frame | None = None

    async def send(self, **command: object) -> None:
        """Send a command; events that arrived before it are forgotten (they cannot be its answer)."""
        self.events.clear()
        await self.ws.send(json.dumps(command))

    async def next(self, timeout: float = 5.0) -> Frame | dict:
        message = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(message, bytes):
            self.last_frame = decode(message)
            return self.last_frame
        parsed = json.loads(message)
        self.events.append(parsed)
        return parsed

    async def frame(self, timeout: float = 5.0) -> Frame:
        deadline = time.monotonic() + timeout
        while not isinstance(item := await self.next(max(0.01, deadline - time.monotonic())), Frame):
            pass
        return item

    async def frame_at_step(self, step: int, timeout: float = 20.0) -> Frame:
        deadline = time.monotonic() + timeout
        while (f := await self.frame(max(0.01, deadline - time.monotonic()))).step < step:
            pass
        return f

    async def event(self, kind: str, timeout: float = 5.0) -> dict:
        """The next event of this kind (earlier ones that already arrived count too)."""
        for e in self.events:
            if e["type"] == kind:
                self.events.remove(e)
                return e
        deadline = time.monotonic() + timeout
        while True:
            item = await self.next(max(0.01, deadline - time.monotonic()))
            if isinstance(item, dict) and item["type"] == kind:
                self.events.remove(item)
                return item

    async def quiet(self, seconds: float) -> list[Frame]:
        """Everything that arrives within `seconds` (frames only)."""
        frames, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = await self.next(left)
            except TimeoutError:
                break
            if isinstance(item, Frame):
                frames.append(item)
        return frames

    async def closed(self, timeout: float = 10.0) -> websockets.frames.Close:
        """Read until the server closes; the close frame it sent."""
        deadline = time.monotonic() + timeout
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await self.next(max(0.01, deadline - time.monotonic()))
        assert info.value.rcvd is not None, "the connection dropped without a close frame"
        return info.value.rcvd


@contextlib.asynccontextmanager
async def watch(url: str, **kwargs: object) -> AsyncIterator[Viewer]:
    # A test client that stopped reading has frames queued ahead of the server's close frame: without a short
    # close timeout each such close waits websockets' default 10 s.
    kwargs.setdefault("close_timeout", 1)
    async with websockets.connect(url, compression=None, **kwargs) as ws:
        yield Viewer(ws)
