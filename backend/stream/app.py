"""The stream service: `WS /ws/stream` plays models to many viewers; `GET /health` says how it is doing.

Run: `uvicorn backend.stream.app:app --host 0.0.0.0 --port 8001` (protocol: docs/stream-protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable

import redis.asyncio
import torch
from fastapi import FastAPI, Request, WebSocket
from redis.exceptions import RedisError

from backend.config import Settings, get_settings
from backend.nca.model import pick_device
from backend.nca.modelfile import ModelFileError
from backend.storage.artifacts import ArtifactError, artifacts_from_settings
from backend.storage.connection import REDIS_DOWN_ERRORS, connect
from backend.storage.jobs import JobStore
from backend.storage.models import CHECKPOINT_CHANNEL, EXAMPLE_PREFIX, CheckpointNotFound, ModelCatalog, ModelNotFound
from backend.storage.owners import (
    COOKIE,
    OWNER_HEADER,
    SHARE_PARAM,
    SHARES_COOKIE,
    Caller,
    Owners,
    identify,
    share_tokens,
)
from backend.storage.rooms import RoomStore
from backend.storage.sharing import Access
from backend.storage.stream_clients import StreamSlots

from . import guard, rooms
from . import protocol as p
from .engine import Engine, StreamsFull
from .protocol import ProtocolError, event, parse_command, parse_params
from .sessions import Session
from .transport import ExposeTransport, abort, first_to_end, quiet_invalid_text

log = logging.getLogger(__name__)
CLOSE_WAIT = 5.0  # seconds to wait for a close frame to go out before giving up on the client
SCOPE_OWNER_SLOT = "nca.owner_slot"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    quiet_invalid_text()
    if settings.stream_torch_threads > 0:
        torch.set_num_threads(settings.stream_torch_threads)
    client = connect(settings.redis_url)
    catalog = ModelCatalog(JobStore(client, settings.checkpoint_history, artifacts_from_settings(settings)),
                           settings.models_dir)

    def fetch(model_id: str) -> tuple[bytes, int, str]:
        version = catalog.get_model_version(model_id)  # first: the bytes are then at least this new
        data = catalog.get_model_bytes(model_id)
        # An example is "ready", as the catalog lists it; its entry is not read here, so that a broken
        # file header is reported by the model file reader (1011), not taken for a missing model.
        status = "ready" if model_id.startswith(EXAMPLE_PREFIX) else catalog.get_entry(model_id).status
        return data, version, status

    engine = Engine(fetch, pick_device(settings.device), settings.stream_max_sessions,
                    loop_multiple=settings.stream_loop_multiple)
    slots_client = redis.asyncio.Redis.from_url(settings.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0)
    slots = StreamSlots(slots_client, settings.stream_max_sessions_per_client)
    app.state.engine, app.state.settings, app.state.checkpoints = engine, settings, "connecting"
    app.state.client_slots = slots
    app.state.rooms = rooms.Rooms(RoomStore(client, settings.room_idle_timeout, settings.room_lease_seconds),
                                  engine, settings)
    # Who may watch what: the owner (cookie, sent with the upgrade to the same site), a share link, the gallery.
    app.state.access = Access(client, Owners(client, settings.secret_key, settings.owner_token_days))
    app.state.owner_slots = owner_slots = StreamSlots(slots_client, settings.stream_max_sessions_per_owner)
    tasks = [asyncio.create_task(engine.run()), asyncio.create_task(follow_checkpoints(app, settings.redis_url)),
             asyncio.create_task(slots.keep_renewing()), asyncio.create_task(owner_slots.keep_renewing())]
    try:
        yield
    finally:
        await app.state.rooms.shutdown()  # snapshots saved, leases let go: another replica resumes at once
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(*guard.STORE_ERRORS):  # slots of streams cut by the shutdown
            await slots.give_back_all()
            await owner_slots.give_back_all()
        await slots_client.aclose()
        client.close()


service = FastAPI(title="Growing NCA stream", lifespan=lifespan)
# Outermost, so that it sees uvicorn's own `send` (FastAPI's middlewares wrap it).
app = ExposeTransport(service, send_buffer=get_settings().stream_send_buffer)


@service.get("/health")
async def health(request: Request) -> dict:
    state = request.app.state
    engine: Engine = state.engine
    return {
        "status": "ok", "device": str(engine.device), "sessions": len(engine.sessions),
        "max_sessions": engine.max_sessions, "torch_threads": torch.get_num_threads(),
        "frames_dropped": engine.frames_dropped(),
        "models": {m.id: {"version": m.version, "sessions": len(m.sessions)} for m in engine.models.values()},
        "ticks": engine.ticks, "tick_ms": _summary(engine.tick_ms), "checkpoints": state.checkpoints,
        "rooms": {r.room.id: {"participants": len(r.participants), "step": r.session.step}
                  for r in state.rooms.live.values()},
    }


def _summary(values: Iterable[float]) -> dict[str, float] | None:
    """Median, 95th percentile and maximum of recent values, in /health."""
    ordered = sorted(values)
    if not ordered:
        return None
    at = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.95, 1.0)]
    return {"p50": round(at[0], 2), "p95": round(at[1], 2), "max": round(at[2], 2)}


@service.websocket("/ws/stream")
async def stream(ws: WebSocket) -> None:
    try:
        await _stream(ws)
    finally:
        await guard.release(ws, ws.app.state.client_slots)  # the slot guard.admit took for the client
        slot = ws.scope.pop(SCOPE_OWNER_SLOT, None)
        if slot is not None:
            with contextlib.suppress(*guard.STORE_ERRORS):
                await ws.app.state.owner_slots.give_back(slot)


def caller_of(ws: WebSocket, settings: Settings) -> Caller:
    """The viewer, as the API sees it (backend/api/identity.py): cookie or X-Owner-Token, share links."""
    access: Access = ws.app.state.access
    token = ws.headers.get(OWNER_HEADER) or ws.cookies.get(COOKIE)
    shares = share_tokens(ws.cookies.get(SHARES_COOKIE), ws.query_params.get(SHARE_PARAM))
    return identify(access.owners, token, shares, settings.admin_token)


def room_visibility(ws: WebSocket, settings: Settings) -> rooms.MaySee:
    """Who may see a room's model: whoever may see it themselves, or anyone with the room's code while the room's
    creator (`owner:<id>` when the creator had an owner) may see it: opening a room shares the model's frames."""
    access: Access = ws.app.state.access

    def may_see(model: str, creator: str) -> bool:
        if access.visible(model, caller_of(ws, settings)):
            return True
        owner = creator.removeprefix("owner:") if creator.startswith("owner:") else None
        return owner is not None and access.visible(model, Caller(owner=owner))

    return may_see


def may_watch(ws: WebSocket, settings: Settings, model_id: str) -> tuple[bool, Caller]:
    """Whether this viewer may see the model (someone else's job reads as an unknown model). Blocking."""
    caller = caller_of(ws, settings)
    return ws.app.state.access.visible(model_id, caller), caller


async def _owner_slot(ws: WebSocket, settings: Settings, caller: Caller) -> tuple[int, str] | None:
    """One of the owner's stream slots (all replicas together); a refusal when it has them all open."""
    if caller.owner is None or caller.admin:
        return None
    try:
        slot = await ws.app.state.owner_slots.take("owner:" + caller.owner)
    except guard.STORE_ERRORS:
        return None  # as for the address's slots: let in uncounted while Redis is unreachable
    if slot is None:
        return p.CLOSE_TRY_AGAIN_LATER, (f"stream quota: you have {settings.stream_max_sessions_per_owner} streams "
                                         "open already; close one (another tab?) first")
    ws.scope[SCOPE_OWNER_SLOT] = slot
    return None


async def _stream(ws: WebSocket) -> None:
    await ws.accept()
    engine: Engine = ws.app.state.engine
    settings: Settings = ws.app.state.settings
    if "room" in ws.query_params:  # one CA for many participants: backend/stream/rooms.py
        return await rooms.serve(ws, ws.app.state.rooms, settings, _refuse, _close,
                                 room_visibility(ws, settings))
    if (refusal := await guard.admit(ws, ws.app.state.client_slots, settings)) is not None:  # origin, per client
        return await _refuse(ws, *refusal)
    try:
        params = parse_params(ws.query_params)
        allowed, caller = await asyncio.to_thread(may_watch, ws, settings, params.model)
        if not allowed:
            raise ModelNotFound(params.model)
        if (refusal := await _owner_slot(ws, settings, caller)) is not None:
            return await _refuse(ws, *refusal)
        session = await engine.open(params)
    except ProtocolError as exc:
        return await _refuse(ws, p.CLOSE_BAD_REQUEST, str(exc))
    except StreamsFull:
        reason = f"too many streams (max {engine.max_sessions}); try again later"
        return await _refuse(ws, p.CLOSE_TRY_AGAIN_LATER, reason)
    except CheckpointNotFound as exc:  # model=<job id>@<iteration> of an iteration its history does not have
        return await _refuse(ws, p.CLOSE_UNKNOWN_MODEL, str(exc))
    except ModelNotFound:
        reason = f"unknown model {params.model!r}: pick one from GET /api/models"
        return await _refuse(ws, p.CLOSE_UNKNOWN_MODEL, reason)
    except ModelFileError as exc:
        return await _refuse(ws, p.CLOSE_SERVER_ERROR, f"model {params.model!r} is unreadable: {exc}")
    except REDIS_DOWN_ERRORS:
        return await _refuse(ws, p.CLOSE_SERVER_ERROR, "the model store (Redis) is unavailable; try again later")
    except ArtifactError as exc:  # the model file is missing, damaged or the store unreachable: say which
        return await _refuse(ws, p.CLOSE_SERVER_ERROR, f"model {params.model!r} could not be loaded: {exc}")
    except Exception:  # e.g. a garbled version in the store: still a documented close, not a dropped connection
        log.exception("could not open a stream of model %s", params.model)
        return await _refuse(ws, p.CLOSE_SERVER_ERROR, f"model {params.model!r} could not be loaded")
    try:
        session.send_event("model", **session.model.describe(), on_checkpoint=session.on_checkpoint,
                           loop_steps=engine.loop_steps(session.model))
        session.send_state()
        outcome = await _serve(ws, session, engine, settings)
    finally:
        engine.close(session)
    if outcome is not None:
        await _close(ws, *outcome)


async def _serve(ws: WebSocket, session: Session, engine: Engine, settings: Settings) -> tuple[int, str] | None:
    """Run the receiver and the sender until one ends; (close code, reason), or None if the client left."""
    return await first_to_end(_receive(ws, session, engine, settings),
                              _send(ws, session, settings.stream_stall_timeout))


async def _receive(ws: WebSocket, session: Session, engine: Engine, settings: Settings) -> tuple[int, str] | None:
    """Commands in; any bad one gets an `error` event and the stream goes on."""
    idle_timeout = settings.stream_idle_timeout
    while True:
        try:
            message = await asyncio.wait_for(ws.receive(), idle_timeout)
        except TimeoutError:
            return p.CLOSE_IDLE, f"idle: no message from the client for {idle_timeout:g} s"
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        try:
            if (verdict := guard.screen(ws, message, settings)) is not None:  # size, rate
                return verdict
            if text is None:
                raise ProtocolError("commands are JSON text messages, not binary")
            height, width = session.model.size  # a hot-swapped checkpoint may bring another grid
            session.apply(parse_command(text, width, height))
        except ProtocolError as exc:
            session.send_event("error", message=str(exc))
            continue
        engine.wake()  # a rejected command changes nothing: no tick to plan for it


async def _send(ws: WebSocket, session: Session, stall_timeout: float) -> tuple[int, str] | None:
    """The connection's only writer: events, then the newest frame; never more than one frame waiting."""
    while True:
        message = await session.next_message()
        send = ws.send_bytes(message) if isinstance(message, bytes) else ws.send_text(message)
        try:
            await asyncio.wait_for(send, stall_timeout)
        except TimeoutError:
            return p.CLOSE_TOO_SLOW, f"too slow: a frame waited {stall_timeout:g} s to be accepted"
        except Exception:  # the client went away mid-send; the receiver sees the disconnect too
            return None


async def _refuse(ws: WebSocket, code: int, reason: str) -> None:
    """An `error` event saying why, then the close code."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.send_text(event("error", message=reason)), CLOSE_WAIT)
    await _close(ws, code, reason)


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    """Close politely; a client that cannot even take the close frame (stalled) is dropped."""
    reason = reason.encode()[:123].decode(errors="ignore")  # a close reason is at most 123 bytes
    try:
        await asyncio.wait_for(ws.close(code, reason), CLOSE_WAIT)
    except TimeoutError:
        abort(ws.scope)
    except Exception:  # the client is gone already
        pass


async def follow_checkpoints(app: FastAPI, redis_url: str) -> None:
    """Hot-swap: each message on `nca:checkpoints` naming a playing model reloads it; reconnects forever."""
    engine: Engine = app.state.engine
    while True:
        client = redis.asyncio.Redis.from_url(redis_url, socket_connect_timeout=2.0)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(CHECKPOINT_CHANNEL)
                app.state.checkpoints = "subscribed"
                for model_id in list(engine.models):  # catch up on what was published while disconnected
                    await _reload(engine, model_id, None)
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        await _on_checkpoint(engine, message["data"])
        except (RedisError, OSError) as exc:
            app.state.checkpoints = "disconnected"
            log.warning("checkpoint channel unavailable (%s); retrying in 1 s", exc)
            await asyncio.sleep(1.0)
        finally:
            await client.aclose()


async def _on_checkpoint(engine: Engine, data: bytes) -> None:
    try:
        message = json.loads(data)
        model_id, version = str(message["model_id"]), int(message["version"])
    except (ValueError, KeyError, TypeError, OverflowError):  # OverflowError: a version of 1e999
        log.warning("ignoring malformed message on %s: %r", CHECKPOINT_CHANNEL, data[:200])
        return
    status = message.get("status")
    await _reload(engine, model_id, version, status if isinstance(status, str) else None)


async def _reload(engine: Engine, model_id: str, version: int | None, status: str | None = None) -> None:
    """A checkpoint that cannot be read is skipped (its viewers play on); following the channel goes on."""
    try:
        await engine.reload(model_id, version, status)
    except (ModelNotFound, ModelFileError, *REDIS_DOWN_ERRORS) as exc:
        log.warning("could not reload model %s: %s", model_id, exc)
    except Exception:
        log.exception("could not reload model %s", model_id)
