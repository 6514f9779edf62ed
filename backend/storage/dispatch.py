"""Fair dispatch: which waiting job a free worker trains next (docs/deploy.md "Fair dispatch").

Celery's queue stays what it is (one message per job, acknowledged late, recovery unchanged), but a
message no longer decides *which* job its worker trains: it is a turn. When a worker takes a message
it asks `FairQueue.take`, which answers, in one Lua script:

1. a job whose worker was lost (or shut down) and that recovery re-queued (`nca:fair:resume`), first;
2. else the next job of the owner served least recently (`nca:fair:owners`, score = when that owner's
   last job started; an owner never served, or not for a day, scores 0): round-robin across owners,
   each owner's own jobs first-in-first-out (`nca:fair:queue:<owner>`).

Every job sent gets exactly one entry (enqueue/resume before its message is sent), every message
takes at most one entry, so every entry is taken; the message of a job already taken by another
message then takes the next one. A message of a job that has no entry (sent before this existed, or
by hand) gives that job an entry first, so it still gets its turn. With no entry left, a message
trains its own job (the lease decides whether that is still to do).
"""

from __future__ import annotations

import redis

from . import keys
from .connection import text

OWNERLESS = "-"  # the queue of jobs with no owner (from before owners existed)
SERVED_TTL = 86400  # an owner not served for a day starts again at the front

_ENQUEUE_LUA = """
local function enqueue(id, owner)
  local queue = ARGV[3] .. owner
  redis.call('RPUSH', queue, id)
  redis.call('SADD', ARGV[5], id)
  local served = tonumber(redis.call('GET', ARGV[6] .. owner) or '0') or 0
  redis.call('ZADD', ARGV[4], 'NX', served, owner)
end
"""

# ARGV: id, owner, queue prefix, owners, waiting, served prefix.
_ENQUEUE = _ENQUEUE_LUA + """
enqueue(ARGV[1], ARGV[2])
return 1
"""

# ARGV: the message's job id, now, queue prefix, owners, waiting, served prefix, resume, job key prefix,
# ownerless queue name, served ttl.
_TAKE = _ENQUEUE_LUA + """
local id = ARGV[1]
local job = ARGV[8] .. id
if redis.call('SISMEMBER', ARGV[5], id) == 0 and redis.call('EXISTS', job .. ':dispatched') == 0
    and redis.call('HGET', job, 'status') == 'queued' then
  enqueue(id, redis.call('GET', job .. ':owner') or ARGV[9])
end
local picked = redis.call('LPOP', ARGV[7])
if not picked then
  local first = redis.call('ZRANGE', ARGV[4], 0, 0)
  if #first == 0 then return id end
  local owner = first[1]
  local queue = ARGV[3] .. owner
  picked = redis.call('LPOP', queue)
  redis.call('SET', ARGV[6] .. owner, ARGV[2], 'EX', ARGV[10])
  if redis.call('LLEN', queue) > 0 then redis.call('ZADD', ARGV[4], ARGV[2], owner)
  else redis.call('ZREM', ARGV[4], owner) end
  if not picked then return id end
end
redis.call('SREM', ARGV[5], picked)
if redis.call('EXISTS', ARGV[8] .. picked) == 1 then redis.call('SET', ARGV[8] .. picked .. ':dispatched', ARGV[2]) end
return picked
"""

# ARGV: id, resume, waiting, job key prefix. Recovery re-queued it: it goes first.
_RESUME = """
redis.call('LREM', ARGV[2], 0, ARGV[1])
redis.call('RPUSH', ARGV[2], ARGV[1])
redis.call('SADD', ARGV[3], ARGV[1])
return 1
"""

# ARGV: id, owner, queue prefix, owners, waiting, resume, job key prefix. The job will not run (deleted,
# or its message could not be sent): its entry goes.
_DROP = """
local queue = ARGV[3] .. ARGV[2]
redis.call('LREM', queue, 0, ARGV[1])
if redis.call('LLEN', queue) == 0 then redis.call('ZREM', ARGV[4], ARGV[2]) end
redis.call('SREM', ARGV[5], ARGV[1])
redis.call('LREM', ARGV[6], 0, ARGV[1])
redis.call('DEL', ARGV[7] .. ARGV[1] .. ':dispatched')
return 1
"""


class FairQueue:
    """The order in which waiting jobs are trained: resumed first, then round-robin across owners."""

    def __init__(self, client: redis.Redis):
        self._client = client
        self._enqueue = client.register_script(_ENQUEUE)
        self._take = client.register_script(_TAKE)
        self._resume = client.register_script(_RESUME)
        self._drop = client.register_script(_DROP)

    def enqueue(self, job_id: str, owner: str | None) -> None:
        """A new job's entry; before its message is sent."""
        self._enqueue(keys=[], args=[job_id, owner or OWNERLESS, keys.FAIR_QUEUE.prefix, keys.FAIR_OWNERS.pattern,
                                     keys.FAIR_WAITING.pattern, keys.FAIR_SERVED.prefix])

    def take(self, message_job: str, now: float) -> str:
        """The job the worker that took `message_job`'s message trains now (see the module's doc)."""
        args = [message_job, now, keys.FAIR_QUEUE.prefix, keys.FAIR_OWNERS.pattern, keys.FAIR_WAITING.pattern,
                keys.FAIR_SERVED.prefix, keys.FAIR_RESUME.pattern, keys.job_key(""), OWNERLESS, SERVED_TTL]
        return text(self._take(keys=[], args=args))

    def resume(self, job_id: str) -> None:
        """A recovered job (its worker was lost or shut down): ahead of every job not started yet."""
        self._resume(keys=[], args=[job_id, keys.FAIR_RESUME.pattern, keys.FAIR_WAITING.pattern, keys.job_key("")])

    def drop(self, job_id: str, owner: str | None) -> None:
        self._drop(keys=[], args=[job_id, owner or OWNERLESS, keys.FAIR_QUEUE.prefix, keys.FAIR_OWNERS.pattern,
                                  keys.FAIR_WAITING.pattern, keys.FAIR_RESUME.pattern, keys.job_key("")])

    def waiting(self) -> int:
        """Entries not taken yet."""
        return int(self._client.scard(keys.FAIR_WAITING.pattern))
