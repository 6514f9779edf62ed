"""Quotas shared by every API process: active (queued or running) jobs overall, per owner and per
address, and the bytes an owner stores.

Active jobs are counters (`nca:quota:counts`: `total`, `a:<address>`, `o:<owner>`), so an upload's check is
O(1) however many jobs exist: +1 when an upload's reservation becomes a job (`settle`, which also writes the
job's `quota_tags`), -1 in the very script that gives the job a final status or deletes it (finish, cancel,
queue_failed, delete, retention: backend.storage.job_scripts `release_quota`), exactly once because the tags
go in that step. A job whose worker was lost still counts: it is queued again, not final. Uploads being read
hold a reservation in small sorted sets (`nca:quota:pending:<tag>`, reservation -> expiry), counted beside the
counters by the same script that reserves, so concurrent uploads cannot overshoot. The per-address cap is a
coarse guard only (its default lets a classroom behind one NAT train): the owner's is the one a person meets.
Counters kept by the previous version's sorted set (`nca:quota:active`) are rebuilt once (`upgrade`).

Training time: the training seconds (`trained_seconds`, written by the worker as it trains) of the
owner's jobs created in the last 24 hours, running ones included, against a daily allowance.

Bytes stored: the sum of an owner's jobs' target, upload, latest model and history weights, counted
in Redis by a script (no bytes travel). A cancelled or failed job counts until it is deleted
(or expires): cancelling does not free storage, deleting does. This one stays a walk, of the owner's jobs
only (not a counter): its terms are written in places that are not one script today (the model's and the
weights' sizes after the checkpoint's script, the owner link after the record, the upgrade's WATCH
transaction), and a counter that drifted would refuse uploads wrongly; its cost is bounded by the quota
itself (docs/benchmarks.md: 0.5 ms for an owner with 100 jobs, 6-7 ms with 1,000).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis

from . import keys
from .connection import text
from .jobs import job_key

COUNTS_KEY = keys.QUOTA_COUNTS.pattern
JOBS_KEY = keys.QUOTA_JOBS.pattern
PENDING_PREFIX = keys.QUOTA_PENDING.prefix
LEGACY_ACTIVE_KEY = keys.QUOTA_ACTIVE.pattern  # the previous version's: job id or reservation -> expiry
LEGACY_OWNER_KEY = keys.QUOTA_OWNER.pattern
RESERVATION_SECONDS = 120  # an upload being processed holds its slot this long at most
LEGACY_JOB_SCORE = 1e18  # in the legacy sorted set, the score of a member that is a job
RETRY_ACTIVE = 30  # a queued job of a few hundred iterations is usually running by then
RETRY_BYTES = 3600  # storage is freed by deleting, not by waiting


class QuotaExceeded(Exception):
    """Over a quota; the message says which and how to free it, `retry_after` when to ask again."""

    def __init__(self, message: str, retry_after: int = RETRY_ACTIVE):
        super().__init__(message)
        self.retry_after = retry_after


# ARGV: now, reservation id, its expiry, max total, counts, pending prefix, then pairs (identity tag, its max).
# Returns {'ok'|'total'|<tag>, count}: a tag's count is its counter plus its reservations not expired.
_RESERVE = """
local now = tonumber(ARGV[1])
local function count(tag)
  local pending = ARGV[6] .. tag
  redis.call('ZREMRANGEBYSCORE', pending, '-inf', now)
  return (tonumber(redis.call('HGET', ARGV[5], tag) or '0') or 0) + redis.call('ZCOUNT', pending, now, '+inf')
end
local tags = {'total'}
local total = count('total')
if total >= tonumber(ARGV[4]) then return {'total', total} end
for j = 7, #ARGV, 2 do
  local n = count(ARGV[j])
  if n >= tonumber(ARGV[j + 1]) then return {ARGV[j], n} end
  tags[#tags + 1] = ARGV[j]
end
for _, tag in ipairs(tags) do
  redis.call('ZADD', ARGV[6] .. tag, ARGV[3], ARGV[2])
  redis.call('EXPIREAT', ARGV[6] .. tag, math.ceil(tonumber(ARGV[3])))
end
return {'ok', total}
"""

# ARGV: reservation id, its tags (`|a:<address>|o:<owner>|`), the job id ('' for none), now, counts, pending
# prefix, counted jobs, job key prefix. The reservation goes; the job counts from now on, unless it is final
# already (or gone, or counted): then the script that ended it had nothing to release, and nothing is added.
_SETTLE = """
local names = {'total'}
for tag in string.gmatch(ARGV[2], '[^|]+') do names[#names + 1] = tag end
for _, tag in ipairs(names) do redis.call('ZREM', ARGV[6] .. tag, ARGV[1]) end
if ARGV[3] == '' then return 0 end
local job = ARGV[8] .. ARGV[3]
local st = redis.call('HGET', job, 'status')
if (st ~= 'queued' and st ~= 'running') or redis.call('HEXISTS', job, 'quota_tags') == 1 then return 0 end
redis.call('HSET', job, 'quota_tags', ARGV[2])
redis.call('ZADD', ARGV[7], ARGV[4], ARGV[3])
for _, tag in ipairs(names) do redis.call('HINCRBY', ARGV[5], tag, 1) end
return 1
"""

# KEYS: legacy active, legacy owner, counts, counted jobs. ARGV: the legacy job score, job key prefix, now.
# Upgrade in place: each job of the previous version's sorted set that is still queued or running starts
# counting (as `_SETTLE` does; a job counted already is left); its reservations are dropped (they expire within
# minutes). Then both legacy keys go: running it again finds nothing to do.
_UPGRADE = """
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local counted = 0
for i = 1, #members, 2 do
  local id = members[i]
  if tonumber(members[i + 1]) >= tonumber(ARGV[1]) then
    local job = ARGV[2] .. id
    local st = redis.call('HGET', job, 'status')
    if (st == 'queued' or st == 'running') and redis.call('HEXISTS', job, 'quota_tags') == 0 then
      local tags = redis.call('HGET', KEYS[2], id) or '||'
      redis.call('HSET', job, 'quota_tags', tags)
      redis.call('ZADD', KEYS[4], ARGV[3], id)
      redis.call('HINCRBY', KEYS[3], 'total', 1)
      for tag in string.gmatch(tags, '[^|]+') do redis.call('HINCRBY', KEYS[3], tag, 1) end
      counted = counted + 1
    end
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
return counted
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
        self._settle = client.register_script(_SETTLE)
        self._upgrade = client.register_script(_UPGRADE)
        self._upgraded = False  # whether this process rebuilt the counters from the legacy set (`upgrade`)
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
        if not self._upgraded:
            self.upgrade()
        reservation = "reservation:" + uuid.uuid4().hex
        tags = [("a:" + client, self.max_per_client)]
        if owner is not None:
            tags.append(("o:" + owner, self.max_per_owner))
        args = [now, reservation, now + RESERVATION_SECONDS, self.max_total, COUNTS_KEY, PENDING_PREFIX,
                *(v for tag in tags for v in tag)]
        outcome, count = self._reserve(keys=[], args=args)
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
        """The jobs that count for the caps (queued or running), oldest slot first."""
        return [text(m) for m in self._client.zrange(JOBS_KEY, 0, -1)]

    def counts(self) -> dict[str, int]:
        """The counters: `total`, `a:<address>`, `o:<owner>` -> queued or running jobs (none at 0)."""
        return {text(k): int(v) for k, v in self._client.hgetall(COUNTS_KEY).items()}

    def settle(self, reservation: Reservation, job_id: str | None) -> None:
        """The reservation becomes the job's slot (it counts until the job's status is final), or is dropped."""
        self._settle(keys=[], args=[reservation.id, reservation.tags, job_id or "", time.time(), COUNTS_KEY,
                                    PENDING_PREFIX, JOBS_KEY, job_key("")])

    def upgrade(self) -> int:
        """Rebuild the counters from the previous version's sorted set, once (idempotent: the set is deleted);
        how many jobs started counting. Run at the API's start and before this process's first reservation."""
        counted = int(self._upgrade(keys=[LEGACY_ACTIVE_KEY, LEGACY_OWNER_KEY, COUNTS_KEY, JOBS_KEY],
                                    args=[LEGACY_JOB_SCORE, job_key(""), time.time()]))
        self._upgraded = True
        return counted
