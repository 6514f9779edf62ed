"""Quotas shared by every API process: active (queued or running) jobs overall, per owner and per
address, and the bytes an owner stores.

`nca:quota:active` (sorted set: job id or pending reservation -> expiry) and `nca:quota:owner`
(hash: member -> the identities it counts for, `|a:<address>|o:<owner>|`). A Lua script counts and
reserves in one step, so concurrent uploads cannot overshoot; a job stops counting when its status
is final (members drop out lazily). The per-address cap is a coarse guard only (its default lets
a classroom behind one NAT train): the owner's is the one a person meets.

Training time: the training seconds (`trained_seconds`, written by the worker as it trains) of the
owner's jobs created in the last 24 hours, running ones included, against a daily allowance.

Bytes stored: the sum of an owner's jobs' target, upload, latest model and history weights, counted
in Redis by a script (no bytes travel). A cancelled or failed job counts until it is deleted
(or expires): cancelling does not free storage, deleting does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis

from . import keys
from .connection import text
from .jobs import job_key

ACTIVE_KEY = keys.QUOTA_ACTIVE.pattern
OWNER_KEY = keys.QUOTA_OWNER.pattern
RESERVATION_SECONDS = 120  # an upload being processed holds its slot this long at most
JOB_SCORE = 1e18  # the score of a member that is a job (it stays until the job finishes)
RETRY_ACTIVE = 30  # a queued job of a few hundred iterations is usually running by then
RETRY_BYTES = 3600  # storage is freed by deleting, not by waiting


class QuotaExceeded(Exception):
    """Over a quota; the message says which and how to free it, `retry_after` when to ask again."""

    def __init__(self, message: str, retry_after: int = RETRY_ACTIVE):
        super().__init__(message)
        self.retry_after = retry_after


# KEYS: active, owner. ARGV: now, JOB_SCORE, the job key prefix, reservation id, its expiry, max total,
# then pairs (identity tag, its max). Returns {'ok'|'total'|<tag>, count}.
# Job members are alive while their status is queued or running.
_RESERVE = """
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local total = 0
local counts = {}
for i = 7, #ARGV, 2 do counts[i] = 0 end
for i = 1, #members, 2 do
  local member, score = members[i], tonumber(members[i + 1])
  local alive
  if score < tonumber(ARGV[2]) then
    alive = score > tonumber(ARGV[1])
  else
    local st = redis.call('HGET', ARGV[3] .. member, 'status')
    alive = st == 'queued' or st == 'running'
  end
  if alive then
    total = total + 1
    local who = redis.call('HGET', KEYS[2], member) or ''
    for j = 7, #ARGV, 2 do
      if string.find(who, '|' .. ARGV[j] .. '|', 1, true) then counts[j] = counts[j] + 1 end
    end
  else
    redis.call('ZREM', KEYS[1], member)
    redis.call('HDEL', KEYS[2], member)
  end
end
if total >= tonumber(ARGV[6]) then return {'total', total} end
local tags = {}
for j = 7, #ARGV, 2 do
  if counts[j] >= tonumber(ARGV[j + 1]) then return {ARGV[j], counts[j]} end
  tags[#tags + 1] = ARGV[j]
end
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[4], '|' .. table.concat(tags, '|') .. '|')
return {'ok', total}
"""

# KEYS: the owner's job index. ARGV: the job key prefix. The bytes of the owner's jobs' stored files.
_BYTES = """
local total = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local base = ARGV[1] .. id
  -- Files in the artifact store: their sizes in the record (every history entry's weights are one size).
  local sizes = redis.call('HMGET', base, 'target_bytes', 'upload_bytes', 'model_bytes', 'weights_bytes')
  local stored = {}
  for i = 1, 4 do stored[i] = tonumber(sizes[i]) or 0 end
  total = total + stored[1] + stored[2] + stored[3] + stored[4] * redis.call('ZCARD', base .. ':history')
  -- Blobs of a job stored by an older version (in Redis until moved).
  total = total + redis.call('STRLEN', base .. ':target') + redis.call('STRLEN', base .. ':upload')
    + redis.call('STRLEN', base .. ':model')
  local weights = base .. ':history:weights'
  for _, field in ipairs(redis.call('HKEYS', weights)) do total = total + redis.call('HSTRLEN', weights, field) end
end
return total
"""


# KEYS: the owner's job index (score: created_at). ARGV: the job key prefix, the window's start.
# {the training seconds of the jobs created since, the creation time of the oldest of them ('' for none)}.
_TRAINED = """
local total = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf')) do
  total = total + (tonumber(redis.call('HGET', ARGV[1] .. id, 'trained_seconds') or '') or 0)
end
local first = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {tostring(total), first[2] or ''}
"""
DAY = 86400


@dataclass(frozen=True)
class Reservation:
    id: str
    tags: str  # what the job will count for


class JobQuota:
    """Reserve a slot before an upload is read; it becomes the job's, or is given back."""

    def __init__(self, client: redis.Redis, max_total: int, max_per_client: int, max_per_owner: int = 10,
                 max_owner_bytes: int = 0, max_owner_seconds_per_day: float = 0.0):
        """`max_per_client`: per address; `max_owner_bytes`, `max_owner_seconds_per_day`: 0 for no quota."""
        self._client, self.max_total, self.max_per_client = client, max_total, max_per_client
        self.max_per_owner, self.max_owner_bytes = max_per_owner, max_owner_bytes
        self.max_owner_seconds_per_day = max_owner_seconds_per_day
        self._reserve = client.register_script(_RESERVE)
        self._bytes = client.register_script(_BYTES)
        self._trained = client.register_script(_TRAINED)

    def trained_today(self, owner: str, now: float) -> tuple[float, float | None]:
        """(training seconds of the owner's jobs created in the last 24 hours, when the oldest of them was created)."""
        total, oldest = self._trained(keys=[keys.OWNER_JOBS.prefix + owner + ":jobs"], args=[job_key(""), now - DAY])
        return float(text(total)), float(text(oldest)) if text(oldest) else None

    def owner_bytes(self, owner: str) -> int:
        """What the owner's jobs store now (their files in Redis)."""
        return int(self._bytes(keys=[keys.OWNER_JOBS.prefix + owner + ":jobs"], args=[job_key("")]))

    def reserve(self, client: str, now: float, owner: str | None = None) -> Reservation:
        """A reservation, or QuotaExceeded saying which quota is reached and how to free it."""
        if owner is not None and self.max_owner_bytes > 0:
            stored = self.owner_bytes(owner)
            if stored >= self.max_owner_bytes:
                raise QuotaExceeded(
                    f"storage quota: your jobs store {stored / 1e6:.1f} MB (at most {self.max_owner_bytes / 1e6:.1f}"
                    " MB): delete jobs you no longer need (Delete on the Jobs view, or DELETE /api/jobs/{id}); "
                    "cancelled jobs count until deleted", RETRY_BYTES)
        if owner is not None and self.max_owner_seconds_per_day > 0:
            trained, oldest = self.trained_today(owner, now)
            if trained >= self.max_owner_seconds_per_day:
                wait = int((oldest or now) + DAY - now) + 1
                raise QuotaExceeded(
                    f"training-time quota: your jobs of the last 24 hours trained {trained / 60:.0f} minutes (at most "
                    f"{self.max_owner_seconds_per_day / 60:.0f} a day): try again in {wait // 3600} h "
                    f"{wait % 3600 // 60} min, when the oldest of them is a day old", max(wait, 1))
        reservation = "reservation:" + uuid.uuid4().hex
        tags = [("a:" + client, self.max_per_client)]
        if owner is not None:
            tags.append(("o:" + owner, self.max_per_owner))
        args = [now, JOB_SCORE, job_key(""), reservation, now + RESERVATION_SECONDS, self.max_total,
                *(v for tag in tags for v in tag)]
        outcome, count = self._reserve(keys=[ACTIVE_KEY, OWNER_KEY], args=args)
        outcome = text(outcome)
        if outcome == "ok":
            return Reservation(reservation, "|" + "|".join(tag for tag, _ in tags) + "|")
        if outcome == "total":
            raise QuotaExceeded(f"the server already has {count} queued or running jobs (at most {self.max_total}); "
                                "try later")
        if outcome.startswith("o:"):
            raise QuotaExceeded(f"active-jobs quota: you already have {count} queued or running jobs (at most "
                                f"{self.max_per_owner}); wait for one to finish or cancel one")
        raise QuotaExceeded(f"your address already has {count} queued or running jobs (at most "
                            f"{self.max_per_client}, for everyone behind it together); wait for one to finish "
                            "or cancel one")

    def job_ids(self) -> list[str]:
        """The jobs that held a slot when last counted, oldest slot first: queued or running ones, and
        finished ones until the next reservation drops them (read their status)."""
        return [text(m) for m in self._client.zrangebyscore(ACTIVE_KEY, JOB_SCORE, "+inf")]

    def settle(self, reservation: Reservation, job_id: str | None) -> None:
        """The reservation becomes the job's slot (it counts until the job finishes), or is dropped."""
        with self._client.pipeline(transaction=True) as pipe:
            pipe.zrem(ACTIVE_KEY, reservation.id)
            pipe.hdel(OWNER_KEY, reservation.id)
            if job_id is not None:
                pipe.zadd(ACTIVE_KEY, {job_id: JOB_SCORE})
                pipe.hset(OWNER_KEY, job_id, reservation.tags)
            pipe.execute()
