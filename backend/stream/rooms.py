"""Rooms: many participants on one CA (`WS /ws/stream?room=<id>`, docs/stream-protocol.md).

A room is one engine session (one state, ticked once however many watch it) whose frames and events
go, as the same bytes, into every participant's own one-frame outbox; each participant has its own
sender task, so a slow one is dropped without slowing the others (as for streams).

The room's state lives on the one replica that holds its lease in Redis (backend/storage/rooms.py).
The proxy sends a room's joiners to one replica by hashing the room id (deploy/Caddyfile); that
replica takes the lease, waiting for a dead holder's lease to lapse, or asking a live one to yield
(it saves a snapshot, releases, and closes its connections with 1012 so they reconnect here). A
snapshot is saved every `room_snapshot_every` seconds, and a replica that takes a room resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from fastapi import WebSocket

from backend.config import Settings
from backend.storage.connection import REDIS_DOWN_ERRORS
from backend.storage.models import CheckpointNotFound, ModelNotFound
from backend.storage.rooms import Room, RoomNotFound, RoomStore, Snapshot

from . import guard
from . import protocol as p
from .engine import Engine, StreamsFull
from .protocol import ProtocolError, StreamParams, event, parse_command
from .sessions import MAX_PENDING_EVENTS, Session
from .transport import first_to_end

log = logging.getLogger(__name__)

HOST_COMMANDS = frozenset({"pause", "play", "step", "speed", "rotate", "reset", "model", "close"})
HOST_IN_URL = ('the host token goes in a command, {"cmd": "host", "token": "..."}, not in the URL '
               "(URLs end up in logs)")
EDIT_COMMANDS = frozenset({"erase", "seed"})
EMPTY_GRACE = 5.0  # seconds a room stays loaded on its replica after its last participant left
Close = tuple[int, str]


@dataclass(eq=False)
class Participant:
    """One connection to a room: its own outbox (the latest frame, a short queue of events)."""

    number: int
    host: bool
    edits: guard.CommandLimiter
    latest_frame: bytes | None = None
    events: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_PENDING_EVENTS))
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    frames_dropped: int = 0
    closing: Close | None = None  # set by the room: the sender closes the connection with it
    count: str | None = None  # the latest `participants` event not sent yet: a burst of joins is one event
    may_see: Callable[[str, str], bool] = lambda model, creator: False  # see `serve` (blocking)

    def set_count(self, text: str) -> None:
        self.count = text
        self.ready.set()

    def offer_frame(self, frame: bytes) -> None:
        if self.latest_frame is not None:
            self.frames_dropped += 1
        self.latest_frame = frame
        self.ready.set()

    def send_text(self, text: str) -> None:
        self.events.append(text)
        self.ready.set()

    def send_event(self, kind: str, **fields: object) -> None:
        self.send_text(event(kind, **fields))

    def close(self, code: int, reason: str) -> None:
        self.closing = (code, reason)
        self.ready.set()

    async def next_message(self) -> str | bytes | Close:
        while not self.events and self.count is None and self.latest_frame is None and self.closing is None:
            self.ready.clear()
            await self.ready.wait()
        if self.events:
            return self.events.popleft()
        if self.count is not None:
            count, self.count = self.count, None
            return count
        if self.closing is not None:
            return self.closing
        frame, self.latest_frame = self.latest_frame, None
        return frame


@dataclass(eq=False)
class RoomSession(Session):
    """The room's one engine session: what the engine hands it goes to every participant, encoded once."""

    participants: set[Participant] = field(default_factory=set)
    last_frame: bytes | None = None  # for a participant who joins a paused room
    # Each participant's last stroke since the previous frame: one `strokes` event per frame however many
    # draw (60 people erasing 10 times a second would otherwise be 600 events a second to each of them).
    strokes: dict[int, dict] = field(default_factory=dict)

    def offer_frame(self, frame: bytes) -> None:
        self.last_frame = frame
        if self.strokes:  # queued before the frame that shows them (a participant's events go out first)
            self.send_event("strokes", strokes=list(self.strokes.values()))
            self.strokes.clear()
        for participant in self.participants:
            participant.offer_frame(frame)

    def send_event(self, kind: str, **fields: object) -> None:
        text = event(kind, **fields)
        for participant in self.participants:
            participant.send_text(text)


class LiveRoom:
    """A room this replica plays: its session, participants, and the task that keeps its lease."""

    def __init__(self, room: Room, session: RoomSession, hub: Rooms) -> None:
        self.room, self.session, self.hub = room, session, hub
        self.numbers = 0
        self.last_activity = time.monotonic()
        self.empty_since: float | None = None
        self.ended = False
        self.keeper: asyncio.Task | None = None

    @property
    def participants(self) -> set[Participant]:
        return self.session.participants

    def join(self, host: bool, settings: Settings) -> Participant:
        self.numbers += 1
        participant = Participant(self.numbers, host, guard.CommandLimiter(settings.room_edit_rate,
                                                                           settings.room_edit_burst))
        s = self.session
        participant.send_event("model", **s.model.describe(), on_checkpoint=s.on_checkpoint)
        participant.send_event("state", paused=s.paused, fps=s.fps, steps_per_frame=s.steps_per_frame, angle=s.angle)
        participant.send_event("room", id=self.room.id, code=self.room.code, you=participant.number, host=host,
                               participants=len(self.participants) + 1)
        if s.last_frame is not None:
            participant.offer_frame(s.last_frame)
        self.participants.add(participant)
        self.empty_since = None
        self._announce_count()
        return participant

    def leave(self, participant: Participant) -> None:
        self.participants.discard(participant)
        if not self.participants:
            self.empty_since = time.monotonic()
        self._announce_count()

    def _announce_count(self) -> None:
        text = event("participants", count=len(self.participants))
        for participant in self.participants:
            participant.set_count(text)

    def end(self, code: int, reason: str) -> None:
        """Close every connection with (code, reason); the room is no longer played here."""
        if self.ended:
            return
        self.ended = True
        for participant in list(self.participants):
            participant.close(code, reason)
        self.hub.drop(self)

    def snapshot(self) -> Snapshot:
        """The state as the ticker last left it, in float16 (half the bytes; the CA does not notice)."""
        s = self.session
        state = s.state.detach().to("cpu", torch.float16).contiguous().numpy().tobytes()
        meta = {"model": s.model.id, "version": s.model.version, "step": s.step, "frame": s.frame,
                "paused": s.paused, "fps": s.fps, "steps_per_frame": s.steps_per_frame, "angle": s.angle,
                "shape": list(s.model.shape)}
        return Snapshot(meta, state)


def restore(session: RoomSession, snap: Snapshot) -> bool:
    """Put a snapshot's state and settings into a fresh session of the same model; False if it does not fit."""
    meta = snap.meta
    if meta.get("model") != session.model.id or list(meta.get("shape", [])) != list(session.model.shape):
        return False
    channels, height, width = session.model.shape
    values = np.frombuffer(snap.state, dtype=np.float16)
    if values.size != channels * height * width:
        return False
    state = torch.from_numpy(values.astype(np.float32)).reshape(1, channels, height, width)
    session.state = state.to(session.state.device)
    session.step, session.frame = int(meta.get("step", 0)), int(meta.get("frame", 0))
    session.paused = bool(meta.get("paused", False))
    session.clock.set_fps(float(meta.get("fps", session.fps)), time.monotonic())
    session.steps_per_frame = int(meta.get("steps_per_frame", session.steps_per_frame))
    session.angle = float(meta.get("angle", 0.0))
    session.needs_frame = True
    return True


class Rooms:
    """The rooms this replica plays, by id."""

    def __init__(self, store: RoomStore, engine: Engine, settings: Settings) -> None:
        self.store, self.engine, self.settings = store, engine, settings
        self.replica = uuid.uuid4().hex
        self.live: dict[str, LiveRoom] = {}
        self._opening: dict[str, asyncio.Future[LiveRoom]] = {}

    async def enter(self, room: Room) -> LiveRoom:
        """The live room, taking it over (lease, snapshot) if this replica does not play it yet."""
        if (live := self.live.get(room.id)) is not None and not live.ended:
            return live
        future = self._opening.get(room.id)
        if future is None:
            future = asyncio.ensure_future(self._take(room))
            self._opening[room.id] = future
            future.add_done_callback(lambda _: self._opening.pop(room.id, None))
        return await asyncio.shield(future)

    async def _take(self, room: Room) -> LiveRoom:
        deadline = time.monotonic() + 2 * self.settings.room_lease_seconds + 1.0
        while not await asyncio.to_thread(self.store.acquire, room.id, self.replica):
            if time.monotonic() > deadline:
                raise StreamsFull  # the holder neither yields nor lapses: try again later
            await asyncio.to_thread(self.store.want, room.id, self.replica)
            await asyncio.sleep(0.1)
        try:
            room = await asyncio.to_thread(self.store.get, room.id)  # the model may have been switched
            snap = await asyncio.to_thread(self.store.snapshot, room.id)
            model = snap.meta.get("model", room.model) if snap is not None else room.model
            try:
                session = await self._open(model)
            except ModelNotFound:
                session, snap = await self._open(room.model), None
        except BaseException:
            await asyncio.to_thread(self.store.release, room.id, self.replica)
            raise
        if snap is not None and restore(session, snap):
            log.info("room %s resumed from its snapshot at step %d", room.id, session.step)
        live = LiveRoom(room, session, self)
        live.empty_since = time.monotonic()
        live.keeper = asyncio.create_task(self._keep(live))
        self.live[room.id] = live
        return live

    async def _open(self, model: str) -> RoomSession:
        params = StreamParams(model=model, fps=self.settings.room_fps)
        session = await self.engine.open(params, session_type=RoomSession)
        assert isinstance(session, RoomSession)
        return session

    def drop(self, live: LiveRoom) -> None:
        if self.live.get(live.room.id) is live:
            del self.live[live.room.id]
        self.engine.close(live.session)
        if live.keeper is not None and live.keeper is not asyncio.current_task():
            live.keeper.cancel()

    async def switch_model(self, live: LiveRoom, model: str) -> None:
        """The host's `model` command: every participant now watches `model`, from its seed."""
        old = live.session
        new = await self._open(model)
        new.participants, old.participants = old.participants, set()
        new.paused, new.angle, new.steps_per_frame = old.paused, old.angle, old.steps_per_frame
        live.session = new
        self.engine.close(old)
        new.send_event("model", **new.model.describe(), on_checkpoint=new.on_checkpoint)
        new.send_state()
        await asyncio.to_thread(self.store.set_model, live.room.id, model)

    async def _keep(self, live: LiveRoom) -> None:
        """Renew the lease, save snapshots, notice a close or an idle room; until the room ends here."""
        settings = self.settings
        every = min(1.0, settings.room_lease_seconds / 3)
        last_snapshot = time.monotonic()
        try:
            while not live.ended:
                await asyncio.sleep(every)
                now = time.monotonic()
                try:
                    verdict = await asyncio.to_thread(self.store.renew, live.room.id, self.replica)
                    if verdict == 1 and now - last_snapshot >= settings.room_snapshot_every:
                        await self._save(live)
                        last_snapshot = now
                except REDIS_DOWN_ERRORS as exc:  # play on; the lease is renewed once Redis is back
                    log.warning("room %s: Redis unavailable (%s)", live.room.id, exc)
                    continue
                if verdict == -2:
                    return live.end(p.CLOSE_ROOM_CLOSED, "the room was closed by its host")
                if verdict in (0, -1):
                    if verdict == -1:
                        await self._save(live)
                        await asyncio.to_thread(self.store.release, live.room.id, self.replica)
                    return live.end(p.CLOSE_SERVICE_RESTART, "the room moved to another replica; reconnect")
                if now - live.last_activity > settings.room_idle_timeout:
                    await asyncio.to_thread(self.store.close, live.room)
                    return live.end(p.CLOSE_ROOM_CLOSED, f"the room ended: nobody did anything for "
                                                         f"{settings.room_idle_timeout:g} s")
                if live.empty_since is not None and now - live.empty_since > EMPTY_GRACE:
                    await self._save(live)  # the next joiner (here or elsewhere) resumes from it
                    await asyncio.to_thread(self.store.release, live.room.id, self.replica)
                    return live.end(p.CLOSE_NORMAL, "empty")
        finally:
            if not live.ended:
                live.end(p.CLOSE_SERVICE_RESTART, "the stream service is restarting; reconnect")

    async def _save(self, live: LiveRoom) -> None:
        snap = await asyncio.to_thread(live.snapshot)
        await asyncio.to_thread(self.store.save_snapshot, live.room.id, snap)
        await asyncio.to_thread(self.store.touch, live.room)

    async def shutdown(self) -> None:
        """The service stops: save every room, let the leases go (another replica resumes at once)."""
        for live in list(self.live.values()):
            with contextlib.suppress(Exception):
                await self._save(live)
                await asyncio.to_thread(self.store.release, live.room.id, self.replica)
            live.end(p.CLOSE_SERVICE_RESTART, "the stream service is restarting; reconnect")


# --- one participant's connection -------------------------------------------------------------------
Refuse = Callable[[WebSocket, int, str], Awaitable[None]]
MaySee = Callable[[str, str], bool]  # (model, the room's creator) -> may this connection see the model there


async def serve(ws: WebSocket, hub: Rooms, settings: Settings, refuse: Refuse, close: Refuse, may_see: MaySee) -> None:
    """`WS /ws/stream?room=<id>`: admit, join, pump frames and commands until one side ends. `may_see(model, creator)`
    answers who may see what (backend/stream/app.py, `room_visibility`): a room shows its model's frames, not its
    files, to whoever has its code, as long as its creator may still see that model (deleted, unshared: refused)."""
    query = ws.query_params
    origin = ws.headers.get("origin")
    if not guard.origin_allowed(origin, ws.headers.get("host"), settings):
        return await refuse(ws, p.CLOSE_FORBIDDEN_ORIGIN, f"origin {origin[:60]} may not open streams here")
    if "model" in query:
        return await refuse(ws, p.CLOSE_BAD_REQUEST, "a room plays its own model: give room or model, not both")
    if "host" in query:
        return await refuse(ws, p.CLOSE_BAD_REQUEST, HOST_IN_URL)
    room_id = query.get("room", "").strip().lower()
    try:
        room = await asyncio.to_thread(hub.store.get, room_id)
        if not await asyncio.to_thread(may_see, room.model, room.client):
            return await refuse(ws, p.CLOSE_FORBIDDEN_ORIGIN, "this room's model is no longer available to its "
                                                              "host (deleted or no longer shared)")  # 4403: forbidden
        live = await hub.enter(room)
        while live.ended:  # it emptied and went back to Redis just now: take it again
            live = await hub.enter(room)
    except RoomNotFound:
        return await refuse(ws, p.CLOSE_UNKNOWN_MODEL, f"no open room {room_id[:40]!r}: it was closed, ended "
                                                       "idle, or never existed (POST /api/rooms makes one)")
    except StreamsFull:
        return await refuse(ws, p.CLOSE_TRY_AGAIN_LATER, "the room cannot be played here right now; try again")
    except (ModelNotFound, CheckpointNotFound):
        return await refuse(ws, p.CLOSE_UNKNOWN_MODEL, f"the room's model {room.model!r} is gone")
    except REDIS_DOWN_ERRORS:
        return await refuse(ws, p.CLOSE_SERVER_ERROR, "the room store (Redis) is unavailable; try again later")
    except Exception:
        log.exception("could not open room %s", room_id)
        return await refuse(ws, p.CLOSE_SERVER_ERROR, "the room could not be opened")
    if len(live.participants) >= settings.room_max_participants:
        return await refuse(ws, p.CLOSE_TRY_AGAIN_LATER,
                            f"the room is full (max {settings.room_max_participants} participants)")
    ws.scope[guard.SCOPE_LIMITER] = guard.CommandLimiter(settings.stream_command_rate, settings.stream_command_burst)
    guard._limit_parser(ws, settings.stream_max_message_bytes)
    participant = live.join(False, settings)  # the host says so with its first command
    participant.may_see = may_see
    try:
        outcome = await first_to_end(_receive(ws, live, participant, settings),
                                     _send(ws, participant, settings.stream_stall_timeout))
    finally:
        live.leave(participant)
    if outcome is not None:
        await close(ws, *outcome)


async def _send(ws: WebSocket, participant: Participant, stall_timeout: float) -> Close | None:
    while True:
        message = await participant.next_message()
        if isinstance(message, tuple):
            return message
        send = ws.send_bytes(message) if isinstance(message, bytes) else ws.send_text(message)
        try:
            await asyncio.wait_for(send, stall_timeout)
        except TimeoutError:
            return p.CLOSE_TOO_SLOW, f"too slow: a frame waited {stall_timeout:g} s to be accepted"
        except Exception:
            return None


async def _receive(ws: WebSocket, live: LiveRoom, participant: Participant, settings: Settings) -> Close | None:
    """Commands in. No idle timeout per participant (a projector only watches): the room's own applies."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        try:
            if (verdict := guard.screen(ws, message, settings)) is not None:  # size, overall command rate
                return verdict
            if text is None:
                raise ProtocolError("commands are JSON text messages, not binary")
            outcome = await _command(live, participant, text)
            if outcome is not None:
                return outcome
        except ProtocolError as exc:
            participant.send_event("error", message=str(exc))


async def _command(live: LiveRoom, participant: Participant, text: str) -> Close | None:
    """One command: edits by anyone (rate limited), the rest by the host only."""
    session = live.session
    height, width = session.model.size
    command = _room_command(text, width, height)
    if command[0] == "host":
        if not live.room.is_host(str(command[1])):
            raise ProtocolError("that is not this room's host token (POST /api/rooms returned it); "
                                "you take part as a participant")
        participant.host = True
        room = live.room
        participant.send_event("room", id=room.id, code=room.code, you=participant.number, host=True,
                               participants=len(live.participants))
        return None
    if command[0] in HOST_COMMANDS and not participant.host:
        raise ProtocolError(f"only the room's host can {command[0]}; everyone can erase (drag) and seed (double-click)")
    live.last_activity = time.monotonic()
    match command:
        case ("close", _):
            await asyncio.to_thread(live.hub.store.close, live.room)
            live.end(p.CLOSE_ROOM_CLOSED, "the room was closed by its host")
            return None
        case ("model", model):
            if not await asyncio.to_thread(participant.may_see, model, live.room.client):
                raise ProtocolError(f"you may not see model {model!r}")
            try:
                await live.hub.switch_model(live, model)
            except ModelNotFound:
                raise ProtocolError(f"unknown model {model!r}: pick one from GET /api/models") from None
            except StreamsFull:
                raise ProtocolError("the stream service is full; try again later") from None
            return None
        case (_, parsed):
            if parsed.cmd in EDIT_COMMANDS:
                if not participant.edits.allow(time.monotonic()):
                    rate = participant.edits.rate
                    participant.send_event("throttled", message=f"slow down: at most {rate:g} edits per second; "
                                                                "this one was ignored", cmd=parsed.cmd)
                    return None
                stroke = {"who": participant.number, "cmd": parsed.cmd, "x": parsed.x, "y": parsed.y}
                if parsed.r is not None:
                    stroke["r"] = parsed.r
                session.strokes.pop(participant.number, None)  # the latest last, in the order they came
                session.strokes[participant.number] = stroke
            session.apply(parsed)
            live.hub.engine.wake()
    return None


def _room_command(text: str, width: int, height: int) -> tuple[str, object]:
    """("host", token), ("model", id) and ("close", None) are the room's own; the rest are stream commands."""
    try:
        msg = json.loads(text) if len(text) <= p.MAX_COMMAND_BYTES else None
    except (ValueError, RecursionError):
        msg = None
    if isinstance(msg, dict) and msg.get("cmd") == "close":
        return "close", None
    if isinstance(msg, dict) and msg.get("cmd") == "host":
        if not isinstance(msg.get("token"), str):
            raise ProtocolError('host needs the host token: {"cmd": "host", "token": "..."}')
        return "host", msg["token"]
    if isinstance(msg, dict) and msg.get("cmd") == "model":
        if not isinstance(msg.get("model"), str) or not msg["model"].strip():
            raise ProtocolError('model needs a model id: {"cmd": "model", "model": "example-lizard"}')
        return "model", p.parse_params({"model": msg["model"]}).model
    parsed = parse_command(text, width, height)
    return parsed.cmd, parsed
