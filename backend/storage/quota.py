"""The cap on active (queued or running) jobs, overall and per client, shared by every API process.

`nca:quota:active` (sorted set: job id or pending reservation -> expiry) and `nca:quota:owner`
(hash: member -> client). A Lua script counts and reserves in one step, so concurrent uploads
cannot overshoot; a job stops counting when its status is final (members drop out lazily).
"""

from __future__ import annotations

import uuid

import redis

from .connection import text
from .jobs import job_key

ACTIVE_KEY = "nca:quota:active"
OWNER_KEY = "nca:quota:owner"
RESERVATION_SECONDS = 120  # an upload being processed holds its slot this long at most
JOB_SCORE = 1e18  # the score of a member that is a job (it stays until the job finishes)


class QuotaExceeded(Exception):
    """Over a cap; the message says which and what to do."""


# KEYS: active, owner. ARGV: now, client, max total, max per client, reservation id, its expiry,
# JOB_SCORE, the job key prefix.
# Returns {'ok'|'total'|'client', count}. Job members are alive while their status is queued or running.
_RESERVE = """
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local total, mine = 0, 0
for i = 1, #members, 2 do
  local member, score = members[i], tonumber(members[i + 1])
  local alive
  if score < tonumber(ARGV[7]) then
    alive = score > tonumber(ARGV[1])
  else
    local st = redis.call('HGET', ARGV[8] .. member, 'status')
    alive = st == 'queued' or st == 'running'
  end
  if alive then
    total = total + 1
    if redis.call('HGET', KEYS[2], member) == ARGV[2] then mine = mine + 1 end
  else
    redis.call('ZREM', KEYS[1], member)
    redis.call('HDEL', KEYS[2], member)
  end
end
if total >= tonumber(ARGV[3]) then return {'total', total} end
if mine >= tonumber(ARGV[4]) then return {'client', mine} end
redis.call('ZADD', KEYS[1], ARGV[6], ARGV[5])
redis.call('HSET', KEYS[2], ARGV[5], ARGV[2])
return {'ok', total}
"""


class JobQuota:
    """Reserve a slot before an upload is read; it becomes the job's, or is given back."""

    def __init__(self, client: redis.Redis, max_total: int, max_per_client: int):
        self._client, self.max_total, self.max_per_client = client, max_total, max_per_client
        self._reserve = client.register_script(_RESERVE)

    def reserve(self, client: str, now: float) -> str:
        """A reservation id, or QuotaExceeded saying which cap is reached."""
        reservation = "reservation:" + uuid.uuid4().hex
        args = [now, client, self.max_total, self.max_per_client, reservation, now + RESERVATION_SECONDS, JOB_SCORE,
                job_key("")]
        outcome, count = self._reserve(keys=[ACTIVE_KEY, OWNER_KEY], args=args)
        if text(outcome) == "ok":
            return reservation
        if text(outcome) == "total":
            raise QuotaExceeded(f"the server already has {count} queued or running jobs (at most {self.max_total}); "
                                "try later")
        raise QuotaExceeded(f"you already have {count} queued or running jobs (at most {self.max_per_client}); "
                            "wait for one to finish or cancel one")

    def job_ids(self) -> list[str]:
        """The jobs that held a slot when last counted, oldest slot first: queued or running ones, and
        finished ones until the next reservation drops them (read their status)."""
        return [text(m) for m in self._client.zrangebyscore(ACTIVE_KEY, JOB_SCORE, "+inf")]

    def settle(self, reservation: str, client: str, job_id: str | None) -> None:
        """The reservation becomes the job's slot (it counts until the job finishes), or is dropped."""
        with self._client.pipeline(transaction=True) as pipe:
            pipe.zrem(ACTIVE_KEY, reservation)
            pipe.hdel(OWNER_KEY, reservation)
            if job_id is not None:
                pipe.zadd(ACTIVE_KEY, {job_id: JOB_SCORE})
                pipe.hset(OWNER_KEY, job_id, client)
            pipe.execute()
