"""Streams per client address, counted in Redis so that the cap holds across every stream replica.

    nca:stream:client:<address>   sorted set: slot id -> expiry (Redis server time, ms)

A stream takes a slot before it opens and gives it back when it ends. Its replica renews the
expiry of the slots it holds every SLOT_TTL / 3 seconds, so the slots of a replica that died
(kill -9, a lost host) lapse within SLOT_TTL and stop counting. Expiries use the Redis server's
clock, so replicas on different hosts agree on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import redis.asyncio

from . import keys

CLIENT_PREFIX = keys.STREAM_CLIENT.prefix
SLOT_TTL = 30.0  # seconds a slot outlives its replica's last renewal

_NOW_MS = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"

# KEYS: the client's set. ARGV: limit, ttl_ms, slot id. 1: taken; 0: the client already holds `limit` slots.
_TAKE = f"""
{_NOW_MS}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: one set per slot. ARGV: ttl_ms, then the slot ids. Only slots still there are renewed (XX): one
# given back meanwhile is not brought back.
_RENEW = f"""
{_NOW_MS}
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i + 1]) == 1 then
    redis.call('PEXPIRE', key, ARGV[1])
  end
end
return 0
"""


class StreamSlots:
    """The slots this stream replica holds, by slot id -> client address."""

    def __init__(self, client: redis.asyncio.Redis, limit: int, ttl: float = SLOT_TTL):
        self.client, self.limit, self.ttl_ms = client, limit, int(ttl * 1000)
        self.held: dict[str, str] = {}
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)

    async def take(self, address: str) -> str | None:
        """A slot id, or None when `address` already has `limit` streams open on any replica."""
        slot = uuid.uuid4().hex
        if not await self._take(keys=[CLIENT_PREFIX + address], args=[self.limit, self.ttl_ms, slot]):
            return None
        self.held[slot] = address
        return slot

    async def give_back(self, slot: str) -> None:
        address = self.held.pop(slot, None)
        if address is not None:
            await self.client.zrem(CLIENT_PREFIX + address, slot)

    async def give_back_all(self) -> None:
        """At shutdown: every slot still held, in one round trip."""
        held, self.held = self.held, {}
        if held:
            async with self.client.pipeline(transaction=False) as pipe:
                for slot, address in held.items():
                    pipe.zrem(CLIENT_PREFIX + address, slot)
                await pipe.execute()

    async def renew(self) -> None:
        held = list(self.held.items())
        if held:
            await self._renew(keys=[CLIENT_PREFIX + a for _, a in held], args=[self.ttl_ms, *(s for s, _ in held)])

    async def keep_renewing(self) -> None:
        """Forever (a task of the stream app); a Redis outage only delays the next renewal."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            with contextlib.suppress(redis.RedisError, OSError):  # the next round tries again; a slot
                await self.renew()  # outlives two missed renewals
