"""The engine: models loaded once for their viewers, checkpoints swapped in as jobs write them, and
the single ticker that advances every session, one batched step per model.

Each tick the ticker (an asyncio task) picks the sessions whose next frame is due, groups them
by model and angle (the rotation is one scalar per forward pass), and hands the whole plan to
one worker thread: apply queued edits, stack the states, step the batch, convert the batch to
RGBA8 in one op, unstack. The event loop keeps serving sockets meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from backend.nca.fast import step_batch
from backend.nca.model import NCA, erase_circle, make_seed, plant_seed
from backend.nca.modelfile import ModelInfo, from_bytes
from backend.nca.render import rgba8
from backend.storage.jobs import FINISHED

from .protocol import FLAGS, HEADER, KEEP, RESTARTS, Command, StreamParams
from .sessions import FrameClock, LoadedModel, Session

log = logging.getLogger(__name__)

TICK_HISTORY = 100  # ticks whose compute time /health summarises
TRAINING = ("queued", "running")  # job statuses whose viewers replay growth (a new checkpoint may still come)
PAPER_MAX_STEPS = 96  # a model file that does not say how long it was trained to run: the paper's range

# fetch(model_id) -> (model file bytes, version, status); raises ModelNotFound for unknown ids.
Fetch = Callable[[str], tuple[bytes, int, str]]


def advance(model: NCA, x: torch.Tensor, angle_degrees: float, steps: int) -> torch.Tensor:
    """`steps` CA steps of a batch: the only place the engine runs the model.

    The fast path computes the same rule on the live region only, cell-major (backend/nca/fast.py).
    """
    return step_batch(model, x, math.radians(angle_degrees), steps=steps)


class StreamsFull(RuntimeError):
    """The service already plays max_sessions streams."""


@dataclass
class _Work:
    """One session's share of a tick, captured on the event loop so the thread sees a fixed plan."""

    session: Session
    state: torch.Tensor
    edits: list[Command]
    steps: int
    header: tuple[int, int]  # (frame number, CA step after this tick)
    epoch: int  # the session's epoch when planned: a regrow meanwhile makes this tick's result moot


@dataclass
class _Group:
    net: NCA
    shape: tuple[int, int, int]  # (channels, height, width), as the net was when planned
    angle: float
    work: list[_Work]  # sorted by steps, most first


class Engine:
    def __init__(self, fetch: Fetch, device: torch.device, max_sessions: int, loop_multiple: float = 0.0):
        """`loop_multiple`: a training job's viewers regrow from the seed every this many times its training
        run length (settings.stream_loop_multiple; 0: never)."""
        self.fetch, self.device, self.max_sessions = fetch, device, max_sessions
        self.loop_multiple = loop_multiple
        self.models: dict[str, LoadedModel] = {}
        self.sessions: set[Session] = set()
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        self._wake = asyncio.Event()
        self.ticks = 0
        self._dropped_by_closed = 0  # frames dropped by sessions that have ended
        self.tick_ms: deque[float] = deque(maxlen=TICK_HISTORY)  # compute time of the recent ticks

    # --- sessions ---------------------------------------------------------------------------
    async def open(self, params: StreamParams, session_type: type[Session] = Session) -> Session:
        """A new session on its first (seed) frame; StreamsFull, ModelNotFound or ModelFileError.

        `session_type`: a Session subclass (a room's, which hands its frames to all its participants)."""
        if len(self.sessions) >= self.max_sessions:
            raise StreamsFull
        loaded = await self._model(params.model, params.snapshot)
        if len(self.sessions) >= self.max_sessions:  # others may have joined while the model loaded
            raise StreamsFull
        # Registered with its first session, never without one: a load whose viewer was turned away
        # leaves nothing behind, and one that ends just as the model's last viewer leaves stays registered.
        loaded = self.models.setdefault(params.model, loaded)
        channels, height, width = loaded.shape
        session = session_type(loaded, make_seed(height, width, channels, device=self.device),
                          FrameClock(params.fps, time.monotonic()), params.steps_per_frame, params.angle,
                          params.on_checkpoint, loop=params.loop)
        loaded.sessions.add(session)
        self.sessions.add(session)
        self.wake()
        return session

    def close(self, session: Session) -> None:
        session.closed = True
        if session in self.sessions:
            self._dropped_by_closed += session.frames_dropped
            self.sessions.discard(session)
        loaded = session.model
        loaded.sessions.discard(session)
        if not loaded.sessions and self.models.get(loaded.id) is loaded:
            del self.models[loaded.id]  # free the weights; the next viewer loads the newest version

    def loop_steps(self, loaded: LoadedModel) -> int | None:
        """The replay length of `loaded`'s viewers in CA steps, or None where it plays on: an example, a
        finished job, a snapshot of a history. A model still training is shown doing what it was trained
        for, growing, rather than running on for the hundreds of steps between two checkpoints."""
        if self.loop_multiple <= 0 or loaded.snapshot or loaded.status not in TRAINING:
            return None
        return max(1, round(self.loop_multiple * (loaded.training_steps() or PAPER_MAX_STEPS)))

    def frames_dropped(self) -> int:
        """Frames replaced before a slow client took them, since the service started."""
        return self._dropped_by_closed + sum(s.frames_dropped for s in self.sessions)

    def wake(self) -> None:
        """A session changed (new, command): plan a tick now instead of at the next due time."""
        self._wake.set()

    # --- models -------------------------------------------------------------------------------
    async def _model(self, model_id: str, snapshot: bool = False) -> LoadedModel:
        """`snapshot`: `model_id` names one checkpoint of a job's history (`<job id>@<iteration>`)."""
        if (loaded := self.models.get(model_id)) is not None:
            return loaded
        future = self._loading.get(model_id)
        if future is None:  # one load per model however many viewers arrive at once
            future = asyncio.ensure_future(self._load(model_id, snapshot))
            self._loading[model_id] = future
            future.add_done_callback(lambda _: self._loading.pop(model_id, None))
        return await asyncio.shield(future)

    async def _load(self, model_id: str, snapshot: bool) -> LoadedModel:
        return LoadedModel(model_id, *await asyncio.to_thread(self._read, model_id), snapshot=snapshot)

    def _read(self, model_id: str) -> tuple[NCA, ModelInfo, int, str]:
        data, version, status = self.fetch(model_id)
        mf = from_bytes(data, map_location=self.device)
        return mf.model.eval().requires_grad_(False), mf.info, version, status

    async def reload(self, model_id: str, version: int | None, status: str | None = None) -> bool:
        """Swap in a newer checkpoint of a model that is playing or loading. Each viewer regrows from
        the seed with it, or keeps its cells (its `on_checkpoint`), and gets `reloaded`.

        `version` is the announced one (None: look it up); nothing is swapped unless it is newer.
        `status` is the job's status announced with it: a change without a new checkpoint (the job
        finished) is passed on to the viewers as a `status` event. True when a checkpoint was swapped in.
        A snapshot (one checkpoint of a history) is never swapped: it plays what its viewers chose.
        """
        loaded = self.models.get(model_id)
        if loaded is None and (loading := self._loading.get(model_id)) is not None:
            loaded = await asyncio.shield(loading)  # its reader may have fetched the previous version
        if loaded is None or loaded.snapshot:
            return False
        if version is not None and version <= loaded.version:
            _set_status(loaded, status)
            return False
        net, info, new_version, new_status = await asyncio.to_thread(self._read, model_id)
        if new_version <= loaded.version:
            _set_status(loaded, new_status)
            return False
        resized = (info.channels, info.grid_height, info.grid_width) != loaded.shape
        loaded.model, loaded.info, loaded.version, loaded.status = net, info, new_version, new_status
        for session in loaded.sessions:
            # Another grid: the cells (and the seeds planted on them) do not fit it, whatever was asked.
            regrown = resized or session.on_checkpoint != KEEP
            replanted = session.regrow(replant=not resized) if regrown else 0
            session.send_event("reloaded", **loaded.checkpoint(), regrown=regrown, replanted=replanted)
        self.wake()  # a paused viewer shows its regrown seed at once
        log.info("model %s reloaded at version %d for %d sessions", model_id, new_version, len(loaded.sessions))
        return True

    # --- the ticker -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Forever: wait until some frame is due, compute the tick in a thread, hand out frames."""
        while True:
            now = time.monotonic()
            groups = self._plan(now)
            if not groups:
                await self._sleep_until_due(now)
                continue
            started = time.perf_counter()
            results = await asyncio.to_thread(self._compute, groups)
            self.tick_ms.append((time.perf_counter() - started) * 1000.0)
            self.ticks += 1
            self._deliver(groups, results)

    @staticmethod
    def _deliver(groups: list[_Group], results: list[tuple[torch.Tensor, list[bytes]] | None]) -> None:
        """Back on the event loop: each session's new state and frame, unless it ended or regrew meanwhile
        (a checkpoint swapped in while the tick computed: the old weights' frame is never shown after it)."""
        for group, result in zip(groups, results, strict=True):
            if result is None:
                continue
            batch, frames = result
            for i, work in enumerate(group.work):
                session = work.session
                if session.closed or session.epoch != work.epoch:
                    continue
                session.state = batch[i : i + 1]
                session.frame, session.step = work.header[0] + 1, work.header[1]
                session.offer_frame(frames[i])

    async def _sleep_until_due(self, now: float) -> None:
        playing = [s.clock.next_due for s in self.sessions if not s.paused]
        delay = max(0.0, min(playing) - now) if playing else None
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    def _plan(self, now: float) -> list[_Group]:
        """The sessions due now, grouped by (model, angle); their clocks move past this tick."""
        if not any(_owed(s, now) for s in self.sessions):
            return []
        groups: dict[tuple[LoadedModel, float], _Group] = {}
        for session in self.sessions:
            self._replay(session)
            if _shows_without_step(session):
                steps = 0
            elif not session.paused and session.clock.take(now):  # a tick happens anyway: due soon comes along
                steps = session.steps_per_frame
            elif session.paused and session.pending_steps:
                steps, session.pending_steps = session.pending_steps, 0
            else:
                continue
            session.needs_frame = False
            edits, session.edits = session.edits, []
            step = (0 if any(e.cmd in RESTARTS for e in edits) else session.step) + steps
            key = (session.model, session.angle)
            if key not in groups:
                groups[key] = _Group(session.model.model, session.model.shape, session.angle, [])
            groups[key].work.append(_Work(session, session.state, edits, steps, (session.frame, step), session.epoch))
        for group in groups.values():
            group.work.sort(key=lambda w: -w.steps)
        return list(groups.values())

    def _replay(self, session: Session) -> None:
        """A training job's viewer past its loop length starts over from the seed (its planted cells too)
        when it plays on (or steps): a paused picture stays as it is. One who keeps its cells across
        checkpoints (`on_checkpoint=keep`) or turned the loop off plays on."""
        if session.paused and not session.pending_steps:
            return
        length = self.loop_steps(session.model) if session.loop and session.on_checkpoint != KEEP else None
        if length is None or session.step < length or any(e.cmd in RESTARTS for e in session.edits):
            return
        session.regrow()

    def _compute(self, groups: list[_Group]) -> list[tuple[torch.Tensor, list[bytes]] | None]:
        """Worker thread: each group's batch and frames, or None for a group that failed."""
        results: list[tuple[torch.Tensor, list[bytes]] | None] = []
        with torch.inference_mode():
            for group in groups:
                try:
                    results.append(_compute_group(group))
                except Exception:  # a broken model must not stop the other models' streams
                    model_id = group.work[0].session.model.id
                    log.exception("tick failed for model %s; its viewers skip this frame", model_id)
                    results.append(None)
        return results


def _set_status(loaded: LoadedModel, status: str | None) -> None:
    """A job's new status without a new checkpoint (it finished): every viewer hears of it once.

    A finished job never runs again: a "running" announced before it finished and read after is stale.
    """
    if status is None or status == loaded.status or loaded.status in FINISHED:
        return
    loaded.status = status
    for session in loaded.sessions:
        session.send_event("status", **loaded.checkpoint())


def _compute_group(group: _Group) -> tuple[torch.Tensor, list[bytes]]:
    """Edits, one batched step per CA step, then the frames with their headers."""
    _, height, width = group.shape
    states = [_edited(w.state, w.edits, group.shape) for w in group.work]
    x = torch.cat(states) if len(states) > 1 else states[0]
    # Sorted by steps, most first: run the common steps on the whole batch, then the
    # extra steps of the first n sessions (mixed step counts are rare: step, speed).
    done = 0
    while done < group.work[0].steps:
        n = sum(1 for w in group.work if w.steps > done)
        steps = min(w.steps for w in group.work[:n]) - done
        x = advance(group.net, x, group.angle, steps) if n == len(group.work) else \
            torch.cat([advance(group.net, x[:n], group.angle, steps), x[n:]])
        done += steps
    return x, _frames(x, [w.header for w in group.work], width, height)


def _shows_without_step(s: Session) -> bool:
    """A new session's seed frame, or an edit while paused: a frame now, without a CA step."""
    return s.needs_frame and (s.paused or not s.edits)


def _owed(s: Session, now: float) -> bool:
    """Whether `s` makes a tick happen now (others due soon may then come along)."""
    if _shows_without_step(s):
        return True
    return s.pending_steps > 0 if s.paused else s.clock.owed(now)


def _edited(state: torch.Tensor, edits: list[Command], shape: tuple[int, int, int]) -> torch.Tensor:
    """Apply queued reset/regrow/seed/erase edits, in order, to one (1, C, H, W) state of `shape`."""
    channels, height, width = shape
    if state.shape[1:] != shape:  # a checkpoint with another grid was swapped in: start over
        state = make_seed(height, width, channels, device=state.device)
    for edit in edits:
        if edit.cmd in RESTARTS:
            state = make_seed(height, width, channels, device=state.device)
            for x, y in edit.cells:  # a regrow: the viewer's own seeds again
                plant_seed(state, x, y)
        elif edit.cmd == "seed":
            plant_seed(state, int(edit.x), int(edit.y))
        elif edit.cmd == "erase":
            erase_circle(state, edit.x, edit.y, edit.r)
    return state


def _frames(x: torch.Tensor, headers: list[tuple[int, int]], width: int, height: int) -> list[bytes]:
    """One whole binary message per state, header then RGBA8 pixels; made here, in the worker thread,
    so the event loop only hands them out."""
    pixels = rgba8(x).reshape(len(headers), -1)  # the whole batch in one conversion
    out = np.empty((len(headers), HEADER.size + pixels.shape[1]), dtype=np.uint8)
    for i, (frame, step) in enumerate(headers):
        HEADER.pack_into(out[i], 0, frame & 0xFFFFFFFF, step & 0xFFFFFFFF, width, height, FLAGS)
    out[:, HEADER.size :] = pixels
    return [row.tobytes() for row in out]

