"""What the stream plays: the loaded models, and each viewer's session with its CA state, settings,
frame clock and an outbox that never grows.

The engine's ticker is the only code that touches `state`; commands that change the state
(reset, seed, erase, and the regrow a new checkpoint asks for) are queued in `edits` and applied
by the ticker at the next frame, so an edit can never race with the batched step running in the
worker thread. When a viewer's next frame is due is its `FrameClock`'s alone to say.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from backend.nca.model import NCA
from backend.nca.modelfile import ModelInfo

from .protocol import REGROW, RESTARTS, STEPS_PER_FRAME_RANGE, Command, ProtocolError, event

MAX_PENDING_EVENTS = 32  # a client that never reads its errors loses the oldest ones
MAX_PENDING_EDITS = 64  # edits arrive faster than frames only from a misbehaving client
MAX_REPLANTED = 256  # seeds a regrow plants again (the most recent ones)
DUE_TOLERANCE = 0.001  # seconds; timers may fire a hair early


class FrameClock:
    """When a playing viewer's next frame is due: the one place that reads or moves that time."""

    def __init__(self, fps: float, now: float) -> None:
        self.fps = fps
        self.next_due = now + 1.0 / fps  # the first (seed) frame is sent at once, without the clock

    def owed(self, now: float) -> bool:
        """Whether a frame is due now (this viewer makes a tick happen)."""
        return self.next_due - now <= DUE_TOLERANCE

    def take(self, now: float) -> bool:
        """In a tick at `now`: whether this viewer's frame comes along, moving the due time past it if so.

        Frames due within half a period come along, so that viewers of equal fps fall into step and
        share one batch from then on.
        """
        period = 1.0 / self.fps
        if self.next_due - now > 0.5 * period:
            return False
        if self.next_due - now > DUE_TOLERANCE:
            self.next_due = now + period  # early: from now on in this tick's phase
        else:  # on time or late: keep the exact rate; a late frame is made up, but never more than one
            self.next_due = max(self.next_due + period, now - period)
        return True

    def resume(self, now: float) -> None:
        """Play after a pause: the next frame now, not the ones missed while paused."""
        self.next_due = now

    def set_fps(self, fps: float, now: float) -> None:
        """Faster: the next frame no later than one new period from now."""
        self.fps = fps
        self.next_due = min(self.next_due, now + 1.0 / fps)


@dataclass(eq=False)
class LoadedModel:
    """One model's weights, loaded once for all its viewers."""

    id: str
    model: NCA
    info: ModelInfo
    version: int
    status: str  # "ready" for an example, else the job's status (queued, running, succeeded, ...)
    snapshot: bool = False  # one checkpoint of a job's history (`<job id>@<iteration>`): never swapped
    sessions: set[Session] = field(default_factory=set)

    @property
    def size(self) -> tuple[int, int]:
        return self.info.grid_height, self.info.grid_width

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one session's state."""
        return self.info.channels, self.info.grid_height, self.info.grid_width

    def training_steps(self) -> int | None:
        """The longest CA run of one training iteration (the file's train_config.max_steps), if it says."""
        config = self.info.extra.get("train_config") if isinstance(self.info.extra, dict) else None
        steps = config.get("max_steps") if isinstance(config, dict) else None
        return steps if isinstance(steps, int) and steps > 0 else None

    def describe(self) -> dict:
        """The `model` event's fields."""
        i = self.info
        return {"id": self.id, "name": i.name, "experiment": i.experiment, "source": i.source,
                "width": i.grid_width, "height": i.grid_height, "channels": i.channels, "hidden": i.hidden,
                "iterations": i.iterations, "iteration": i.iterations, "loss": i.final_loss, "version": self.version,
                "status": self.status, "snapshot": self.snapshot}

    def checkpoint(self) -> dict:
        """The `reloaded` and `status` events' fields: which checkpoint plays, and how the job stands."""
        return {"model": self.id, "version": self.version, "iteration": self.info.iterations,
                "iterations": self.info.iterations, "loss": self.info.final_loss, "status": self.status}


@dataclass(eq=False)
class Session:
    model: LoadedModel
    state: torch.Tensor  # (1, C, H, W) on the engine's device
    clock: FrameClock
    steps_per_frame: int
    angle: float  # degrees
    on_checkpoint: str = REGROW  # what a new checkpoint does to the cells: REGROW or KEEP
    loop: bool = True  # the viewer's wish: replay growth while the job trains (Engine.loop_steps says how long)
    paused: bool = False
    step: int = 0  # CA steps since the last reset
    frame: int = 0  # frames rendered so far (the next frame's number)
    pending_steps: int = 0  # `step` commands not yet run (while paused)
    edits: list[Command] = field(default_factory=list)
    # Cells planted with `seed` since the last reset, oldest first: a regrow plants them again.
    seeds: dict[tuple[int, int], None] = field(default_factory=dict)
    epoch: int = 0  # +1 at each regrow: a tick planned before it computed a state that is gone
    needs_frame: bool = True  # render a frame even without stepping (new session, edit while paused)
    closed: bool = False
    # Outbox: the latest frame only, plus a short queue of JSON events; one sender task drains it.
    latest_frame: bytes | None = None
    events: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_PENDING_EVENTS))
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    frames_dropped: int = 0  # frames replaced before the sender took them (the client was behind)

    @property
    def fps(self) -> float:
        return self.clock.fps

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
                if self.paused:
                    self.clock.resume(time.monotonic())
                self.paused = False
                self.pending_steps = 0
            case "speed":
                if command.fps is not None:
                    self.clock.set_fps(command.fps, time.monotonic())
                if command.steps_per_frame is not None:
                    self.steps_per_frame = command.steps_per_frame
            case "rotate":
                self.angle = command.angle
            case "loop":
                self.loop = bool(command.on)
            case "step":
                if not self.paused:
                    raise ProtocolError("step works while paused; send pause first")
                self.pending_steps = min(self.pending_steps + 1, STEPS_PER_FRAME_RANGE[1])
                return
            case "reset" | "seed" | "erase":
                if command.cmd == "reset":
                    self.seeds.clear()
                elif command.cmd == "seed":
                    self._remember_seed(int(command.x), int(command.y))
                self._queue_edit(command)
                return
        self.send_state()

    def send_state(self) -> None:
        self.send_event("state", paused=self.paused, fps=self.fps, steps_per_frame=self.steps_per_frame,
                        angle=self.angle, loop=self.loop)

    def regrow(self, replant: bool = True) -> int:
        """Start over from the seed, plus (`replant`) the cells planted since the last reset: new weights
        play now. What the old weights computed and the client has not got yet is dropped, so every
        frame after this is the new weights' own. Returns the number of cells planted again."""
        if not replant:  # e.g. a checkpoint with another grid: those cells are not on it
            self.seeds.clear()
        self._queue_edit(Command("regrow", cells=tuple(self.seeds)))
        self.epoch += 1
        self.latest_frame = None
        return len(self.seeds)

    def _remember_seed(self, x: int, y: int) -> None:
        self.seeds.pop((x, y), None)
        self.seeds[(x, y)] = None
        if len(self.seeds) > MAX_REPLANTED:
            del self.seeds[next(iter(self.seeds))]

    def _queue_edit(self, command: Command) -> None:
        """Queue a state edit for the next frame; a restart makes the edits queued before it moot."""
        if command.cmd in RESTARTS:
            self.edits.clear()
        elif len(self.edits) >= MAX_PENDING_EDITS:  # drop the oldest, but never the restart they follow
            del self.edits[1 if self.edits[0].cmd in RESTARTS else 0]
        self.edits.append(command)
        self.needs_frame = True
