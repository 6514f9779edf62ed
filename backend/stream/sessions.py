"""One viewer's stream: its CA state and settings, and an outbox that never grows.

The engine's ticker is the only code that touches `state`; commands that change the state
(reset, seed, erase) are queued in `edits` and applied by the ticker at the next frame, so a
command can never race with the batched step running in the worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .protocol import STEPS_PER_FRAME_RANGE, Command, ProtocolError, event

if TYPE_CHECKING:
    from .engine import LoadedModel

MAX_PENDING_EVENTS = 32  # a client that never reads its errors loses the oldest ones
MAX_PENDING_EDITS = 64  # edits arrive faster than frames only from a misbehaving client


@dataclass(eq=False)
class Session:
    model: LoadedModel
    state: torch.Tensor  # (1, C, H, W) on the engine's device
    fps: float
    steps_per_frame: int
    angle: float  # degrees
    paused: bool = False
    step: int = 0  # CA steps since the last reset
    frame: int = 0  # frames rendered so far (the next frame's number)
    next_due: float = 0.0  # loop time at which the next frame is due while playing
    pending_steps: int = 0  # `step` commands not yet run (while paused)
    edits: list[Command] = field(default_factory=list)
    needs_frame: bool = True  # render a frame even without stepping (new session, edit while paused)
    closed: bool = False
    # Outbox: the latest frame only, plus a short queue of JSON events; one sender task drains it.
    latest_frame: bytes | None = None
    events: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_PENDING_EVENTS))
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    frames_dropped: int = 0  # frames replaced before the sender took them (the client was behind)

    # --- outbox -------------------------------------------------------------------------
    def offer_frame(self, frame: bytes) -> None:
        """Replace any frame the sender has not taken yet: a slow client only ever gets the newest."""
        if self.latest_frame is not None:
            self.frames_dropped += 1
        self.latest_frame = frame
        self.ready.set()

    def send_event(self, kind: str, **fields: object) -> None:
        self.events.append(event(kind, **fields))
        self.ready.set()

    async def next_message(self) -> str | bytes:
        """Wait for the next thing to send: queued events first, then the latest frame."""
        while not self.events and self.latest_frame is None:
            self.ready.clear()
            await self.ready.wait()
        if self.events:
            return self.events.popleft()
        frame, self.latest_frame = self.latest_frame, None
        return frame

    # --- commands ---------------------------------------------------------------------------
    def apply(self, command: Command) -> None:
        """Settings change now; state edits wait for the ticker. Replies with a `state` event."""
        match command.cmd:
            case "pause":
                self.paused = True
            case "play":
                if self.paused:  # the next frame now, not the ones missed while paused
                    self.next_due = time.monotonic()
                self.paused = False
                self.pending_steps = 0
            case "speed":
                if command.fps is not None:
                    self.fps = command.fps  # faster: the next frame no later than one new period from now
                    self.next_due = min(self.next_due, time.monotonic() + 1.0 / self.fps)
                if command.steps_per_frame is not None:
                    self.steps_per_frame = command.steps_per_frame
            case "rotate":
                self.angle = command.angle
            case "step":
                if not self.paused:
                    raise ProtocolError("step works while paused; send pause first")
                self.pending_steps = min(self.pending_steps + 1, STEPS_PER_FRAME_RANGE[1])
                return
            case "reset" | "seed" | "erase":
                if len(self.edits) >= MAX_PENDING_EDITS:
                    del self.edits[0]
                self.edits.append(command)
                self.needs_frame = True
                return
        self.send_state()

    def send_state(self) -> None:
        self.send_event("state", paused=self.paused, fps=self.fps, steps_per_frame=self.steps_per_frame,
                        angle=self.angle)

