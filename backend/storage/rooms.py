"""Rooms: one CA that many people watch and edit together (docs/stream-protocol.md, "Rooms").

Redis holds what every replica must agree on; the room's CA state itself lives on one stream replica.

    nca:room:<id>               hash: model, code, host (SHA-256 of the host token), client, created_at, closed
    nca:room:code:<CODE>        string: the room id of a join code
    nca:room:<id>:owner         string: the stream replica that plays the room (a lease, PX room_lease_seconds)
    nca:room:<id>:want          string: a replica the proxy now sends the room's joiners to (asks the owner to yield)
    nca:room:<id>:snapshot      hash: meta (JSON: model, version, step, frame, settings), state (float16 bytes)
    nca:rooms:client:<address>  sorted set: room id -> creation time (rooms per creator)

The record, its code and its snapshot expire `room_idle_timeout` after the last renewal: the replica
that plays a room renews them while anybody is in it, so a room nobody joins or everybody left ends
by itself. Closing deletes the record; the playing replica notices at its next renewal (within a
second) and closes its participants' connections.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

import redis

from . import keys

ROOM_PREFIX = keys.ROOM.prefix
CODE_PREFIX = keys.ROOM_CODE.prefix
CLIENT_PREFIX = keys.ROOMS_CLIENT.prefix
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read off a projector
CODE_LENGTH = 6
TOUCH_MARGIN_MS = 30_000


def room_key(room_id: str) -> str:
    return f"{ROOM_PREFIX}{room_id}"


def is_room_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def normalise_code(value: str) -> str:
    """A join code as typed (any case, spaces, dashes) -> its canonical form."""
    return "".join(c for c in value.upper() if c.isalnum())


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class RoomNotFound(KeyError):
    """No open room with this id or code (never made, closed, or ended idle)."""


class TooManyRooms(RuntimeError):
    """The creator already holds rooms_per_client open rooms."""


@dataclass(frozen=True)
class Room:
    id: str
    code: str
    model: str
    client: str
    created_at: float
    host_digest: str

    def is_host(self, token: str | None) -> bool:
        """Whether `token` is the host token returned when the room was made (constant-time compare)."""
        return bool(token) and hmac.compare_digest(_digest(token), self.host_digest)


@dataclass(frozen=True)
class Snapshot:
    """A room's CA as last saved: enough for another replica to play on from there."""

    meta: dict  # model, version, step, frame, paused, fps, steps_per_frame, angle, shape [C, H, W]
    state: bytes  # float16, C*H*W values, row-major


# KEYS: owner key, want key, record key. ARGV: replica id, lease ms.
# 1: renewed; 0: lost (another replica holds it, or nobody); -1: asked to yield (another replica wants it);
# -2: the room was closed (its record is gone).
_RENEW = """
if redis.call('EXISTS', KEYS[3]) == 0 then return -2 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local want = redis.call('GET', KEYS[2])
if want and want ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: owner key. ARGV: replica id. Deletes the lease only if it is ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RoomStore:
    """Rooms in Redis (sync client: the API calls it from its thread pool, the stream via asyncio.to_thread)."""

    def __init__(self, client: redis.Redis, idle_timeout: float, lease_seconds: float = 3.0):
        self._r = client
        self.idle_ms = int(idle_timeout * 1000)
        self.lease_ms = int(lease_seconds * 1000)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    # --- records ------------------------------------------------------------------------------
    def create(self, model: str, client: str, max_per_client: int) -> tuple[Room, str]:
        """A new room and its host token (returned once, kept only as a digest); TooManyRooms."""
        self._check_quota(client, max_per_client)
        token = secrets.token_urlsafe(24)
        room_id = secrets.token_hex(16)
        now = time.time()
        for _ in range(20):  # 32^6 codes: a clash is rare, and then another code is drawn
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            if self._r.set(f"{CODE_PREFIX}{code}", room_id, nx=True, px=self.idle_ms):
                break
        else:
            raise RuntimeError("no free join code found")
        room = Room(room_id, code, model, client, now, _digest(token))
        pipe = self._r.pipeline()
        pipe.hset(room_key(room_id), mapping={"model": model, "code": code, "client": client,
                                              "created_at": repr(now), "host": room.host_digest})
        pipe.pexpire(room_key(room_id), self.idle_ms)
        pipe.zadd(f"{CLIENT_PREFIX}{client}", {room_id: now})
        pipe.pexpire(f"{CLIENT_PREFIX}{client}", self.idle_ms)
        pipe.execute()
        return room, token

    def _check_quota(self, client: str, max_per_client: int) -> None:
        key = f"{CLIENT_PREFIX}{client}"
        ids = [i.decode() for i in self._r.zrange(key, 0, -1)]
        gone = [i for i, alive in zip(ids, self._exists_many(ids), strict=True) if not alive]
        if gone:
            self._r.zrem(key, *gone)
        if len(ids) - len(gone) >= max_per_client:
            raise TooManyRooms(max_per_client)

    def _exists_many(self, ids: list[str]) -> list[bool]:
        pipe = self._r.pipeline()
        for room_id in ids:
            pipe.exists(room_key(room_id))
        return [bool(n) for n in pipe.execute()]

    def get(self, room_id: str) -> Room:
        """The open room with this id; RoomNotFound."""
        fields = self._r.hgetall(room_key(room_id)) if is_room_id(room_id) else {}
        if not fields or b"model" not in fields:
            raise RoomNotFound(room_id)
        f = {k.decode(): v.decode() for k, v in fields.items()}
        return Room(room_id, f["code"], f["model"], f.get("client", ""), float(f.get("created_at", 0)), f["host"])

    def by_code(self, code: str) -> Room:
        room_id = self._r.get(f"{CODE_PREFIX}{normalise_code(code)}")
        if room_id is None:
            raise RoomNotFound(code)
        return self.get(room_id.decode())

    def find(self, id_or_code: str) -> Room:
        """A room by its id (32 hex) or its join code."""
        return self.get(id_or_code) if is_room_id(id_or_code) else self.by_code(id_or_code)

    def set_model(self, room_id: str, model: str) -> None:
        """The host switched the model: a replica that resumes the room plays this one."""
        self._r.hset(room_key(room_id), "model", model)

    def close(self, room: Room) -> None:
        """Delete the room; its replica notices at its next renewal and closes the connections."""
        self._r.delete(room_key(room.id), f"{CODE_PREFIX}{room.code}", f"{room_key(room.id)}:snapshot",
                       f"{room_key(room.id)}:want")
        self._r.zrem(f"{CLIENT_PREFIX}{room.client}", room.id)

    def touch(self, room: Room) -> None:
        """Somebody is in the room: its record, code and snapshot live another idle timeout (plus a margin, so
        that a room being played never lapses between two touches; its replica ends it when idle)."""
        pipe = self._r.pipeline()
        for key in (room_key(room.id), f"{CODE_PREFIX}{room.code}", f"{room_key(room.id)}:snapshot"):
            pipe.pexpire(key, self.idle_ms + TOUCH_MARGIN_MS)
        pipe.execute()

    # --- which replica plays it ----------------------------------------------------------------
    def acquire(self, room_id: str, replica: str) -> bool:
        """Take the room's lease if nobody holds it (or we do); clears a `want` that was ours."""
        key = f"{room_key(room_id)}:owner"
        got = bool(self._r.set(key, replica, nx=True, px=self.lease_ms)) or self._r.get(key) == replica.encode()
        if got:
            self._release_want(room_id, replica)
        return got

    def want(self, room_id: str, replica: str) -> None:
        """Ask the replica that plays the room to hand it over (the proxy sends its joiners here now)."""
        self._r.set(f"{room_key(room_id)}:want", replica, px=self.lease_ms * 2)

    def _release_want(self, room_id: str, replica: str) -> None:
        key = f"{room_key(room_id)}:want"
        if self._r.get(key) == replica.encode():
            self._r.delete(key)

    def renew(self, room_id: str, replica: str) -> int:
        """1 renewed, 0 lost, -1 asked to yield, -2 closed (see _RENEW)."""
        keys = [f"{room_key(room_id)}:owner", f"{room_key(room_id)}:want", room_key(room_id)]
        return int(self._renew(keys=keys, args=[replica, self.lease_ms]))

    def release(self, room_id: str, replica: str) -> None:
        self._release(keys=[f"{room_key(room_id)}:owner"], args=[replica])

    # --- snapshots ------------------------------------------------------------------------------
    def save_snapshot(self, room_id: str, snapshot: Snapshot) -> None:
        key = f"{room_key(room_id)}:snapshot"
        pipe = self._r.pipeline()
        pipe.hset(key, mapping={"meta": json.dumps(snapshot.meta), "state": snapshot.state})
        pipe.pexpire(key, self.idle_ms)
        pipe.execute()

    def snapshot(self, room_id: str) -> Snapshot | None:
        fields = self._r.hgetall(f"{room_key(room_id)}:snapshot")
        if b"meta" not in fields or b"state" not in fields:
            return None
        try:
            return Snapshot(json.loads(fields[b"meta"]), fields[b"state"])
        except ValueError:
            return None

