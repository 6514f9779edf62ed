"""The job store's Lua scripts: every change of a job is one script, so each is atomic.

Kept apart from the record (backend.storage.jobs) because they are a program of their own, in
another language; `SCRIPTS` maps each JobStore method's name to its source. The status words come
from backend.storage.status, the channel's name from backend.storage.keys.
"""

from __future__ import annotations

from .keys import CHECKPOINTS_CHANNEL, JOB, LEASES, QUOTA_COUNTS, QUOTA_JOBS
from .status import FINISHED

_TERMINAL_LUA = " or ".join(f"st == '{status}'" for status in FINISHED)  # Lua: whether status `st` is final

# Lua: constants and helpers every job script shares. The lease deadlines (`nca:leases`) are in Redis's clock
# (TIME), so workers' clocks do not matter; the quota counters are those of backend/storage/quota.py.
LUA_COMMON = f"""
local LEASES, JOB_PREFIX = '{LEASES.pattern}', '{JOB.prefix}'
local QUOTA_COUNTS, QUOTA_JOBS = '{QUOTA_COUNTS.pattern}', '{QUOTA_JOBS.pattern}'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The job `job` (its hash key) stops counting for the active-job caps: exactly once, because the tags it
-- counts for (`|a:<address>|o:<owner>|`, written when its upload's slot became the job) go in the same step.
-- Call it after the script's first write: a full Redis (noeviction) refuses a script at that write only.
local function release_quota(job, id)
  local tags = redis.call('HGET', job, 'quota_tags')
  if not tags then return end
  redis.call('HDEL', job, 'quota_tags')
  redis.call('ZREM', QUOTA_JOBS, id)
  local names = {{'total'}}
  for tag in string.gmatch(tags, '[^|]+') do names[#names + 1] = tag end
  for _, tag in ipairs(names) do
    if redis.call('HINCRBY', QUOTA_COUNTS, tag, -1) <= 0 then redis.call('HDEL', QUOTA_COUNTS, tag) end
  end
end
"""

# Helpers for scripts whose KEYS[1] is the job hash and KEYS[2] its lease.
_LUA_HELPERS = LUA_COMMON + f"""
-- Whether `token` owns the job: the lease holds it, or the lease expired while nobody took the job
-- over (Redis was down or restarted for longer than the lease), so it is still running under this
-- claim; then the lease is taken back. Recovery waits a lease's length after a Redis restart for this.
local function owns(token)
  local holder = redis.call('GET', KEYS[2])
  if holder then return holder == token end
  if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= token then
    return false
  end
  local ms = redis.call('HGET', KEYS[1], 'lease_ms')
  if not ms then return false end
  redis.call('SET', KEYS[2], token, 'PX', ms)
  redis.call('ZADD', LEASES, now_ms() + tonumber(ms), string.sub(KEYS[1], #JOB_PREFIX + 1))
  return true
end

-- Tell the stream services: a job with a model has a new checkpoint or status (others do not concern them).
-- `job`: its hash key (default KEYS[1]).
local function announce(id, job)
  job = job or KEYS[1]
  local version = tonumber(redis.call('HGET', job, 'model_version') or '0') or 0
  if version > 0 then
    local iteration = tonumber(redis.call('HGET', job, 'checkpoint_iteration') or '0') or 0
    local status = redis.call('HGET', job, 'status')
    redis.call('PUBLISH', '{CHECKPOINTS_CHANNEL.pattern}',
               cjson.encode({{model_id = id, version = version, iteration = iteration, status = status}}))
  end
end
"""

# KEYS: job, index. ARGV: id, now, record field pairs. The target (and upload) are in the artifact store
# already, their SHA-256 among the fields: an artifact is written before the record points at it.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# KEYS: job, lease. ARGV: now, error, id. Only a job no worker has claimed: its message could not be sent.
_QUEUE_FAILED = LUA_COMMON + """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[1], 'error', ARGV[2])
redis.call('ZREM', LEASES, ARGV[3])
release_quota(KEYS[1], ARGV[3])
return 1
"""

# KEYS: job, lease. ARGV: now, id.
_CANCEL = _LUA_HELPERS + f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if {_TERMINAL_LUA} then return 'finished' end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
if st == 'queued' and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  redis.call('ZREM', LEASES, ARGV[2])  -- given back by a worker (shutdown) and cancelled before its resend
  release_quota(KEYS[1], ARGV[2])
  announce(ARGV[2])
  return 'cancelled'
end
return 'requested'
"""

# KEYS: job, lease. ARGV: token, ttl_ms, id, now, device, worker.
_CLAIM = _LUA_HELPERS + f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if {_TERMINAL_LUA} then return st end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'busy' end
redis.call('ZADD', LEASES, now_ms() + tonumber(ARGV[2]), ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'running', 'device', ARGV[5], 'worker', ARGV[6], 'owner', ARGV[1],
           'lease_ms', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if not redis.call('HGET', KEYS[1], 'started_at') then redis.call('HSET', KEYS[1], 'started_at', ARGV[4]) end
announce(ARGV[3])
return 'ok'
"""

# KEYS: job, lease. ARGV: token, ttl_ms, id.
_REFRESH = _LUA_HELPERS + """
if not owns(ARGV[1]) then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', LEASES, now_ms() + tonumber(ARGV[2]), ARGV[3])
return 1
"""

# KEYS: job, lease. ARGV: token, record field pairs.
_PROGRESS = _LUA_HELPERS + """
if not owns(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

# Over the cap, the history drops the checkpoint whose neighbours are closest together (the latest of
# equals), one at a time: the first and the latest stay, and the gaps between those kept stay within a
# factor of two of each other (the newest gap aside), so the whole run is covered evenly.
_THIN_LUA = """
-- The artifact key a history entry points at, after its job's id: `history/<iteration>-<sha256>` ('' for an
-- entry written before the artifact store: its weights are in the legacy hash, dropped here).
local function entry_key(member, iteration, weights)
  local ok, entry = pcall(cjson.decode, member)
  if ok and type(entry) == 'table' and entry.sha256 then return 'history/' .. iteration .. '-' .. entry.sha256 end
  redis.call('HDEL', weights, iteration)
  return ''
end

local function thin(history, weights, cap, dropped)
  if redis.call('ZCARD', history) <= cap then return end
  local scored = redis.call('ZRANGE', history, 0, -1, 'WITHSCORES')
  local its, members = {}, {}
  for i = 2, #scored, 2 do its[#its + 1] = scored[i]; members[#members + 1] = scored[i - 1] end
  while #its > cap do
    local drop, narrowest = nil, nil
    for i = 2, #its - 1 do
      local gap = tonumber(its[i + 1]) - tonumber(its[i - 1])
      if narrowest == nil or gap <= narrowest then drop, narrowest = i, gap end
    end
    redis.call('ZREMRANGEBYSCORE', history, its[drop], its[drop])
    local key = entry_key(members[drop], its[drop], weights)
    if key ~= '' then dropped[#dropped + 1] = key end
    table.remove(its, drop)
    table.remove(members, drop)
  end
end
"""

# KEYS: job, lease, history, legacy history weights (hash), legacy model (deleted: this one replaces it).
# ARGV: token, model key, iteration, loss ('' for none), now, id, model sha256, history cap, loss as JSON,
#       weights sha256 (its object: `<id>/history/<iteration>-<sha256>`, content-addressed).
# The model file and the weights are in the artifact store already (written first, under fresh keys).
# Returns {version (-1: the lease was lost), artifact keys nothing points at any more (the model's whole, the
# history's after the job id)...}: the caller deletes those (a crash before that leaves orphans, which the
# sweep removes).
# The new checkpoint replaces every history entry at its iteration or later: those belong to a run that
# was lost after them and are being trained again, so the history is always one line ending here.
_CHECKPOINT = _LUA_HELPERS + _THIN_LUA + """
if not owns(ARGV[1]) then return {-1} end
local dropped = {}
local previous = redis.call('HGET', KEYS[1], 'model_key')
if previous and previous ~= '' and previous ~= ARGV[2] then dropped[#dropped + 1] = previous end
local version = redis.call('HINCRBY', KEYS[1], 'model_version', 1)
redis.call('HSET', KEYS[1], 'checkpoint_iteration', ARGV[3], 'checkpoint_loss', ARGV[4], 'checkpoint_at', ARGV[5],
           'iteration', ARGV[3], 'loss', ARGV[4], 'model_key', ARGV[2], 'model_sha256', ARGV[7])
local later = redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[3], '+inf', 'WITHSCORES')
for i = 2, #later, 2 do
  local key = entry_key(later[i - 1], later[i], KEYS[4])
  if key ~= '' then dropped[#dropped + 1] = key end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], ARGV[3], '+inf')
redis.call('ZADD', KEYS[3], ARGV[3], '{"iteration":' .. ARGV[3] .. ',"loss":' .. ARGV[9] .. ',"at":' .. ARGV[5]
           .. ',"version":' .. version .. ',"sha256":"' .. ARGV[10] .. '"}')
thin(KEYS[3], KEYS[4], tonumber(ARGV[8]), dropped)
redis.call('DEL', KEYS[5])
announce(ARGV[6])
local out = {version}
for _, key in ipairs(dropped) do out[#out + 1] = key end
return out
"""

# The end steps (finish, suspend) delete first: a delete is allowed when Redis is full (maxmemory with
# noeviction refuses a script only at its first write that may grow memory), so a job can still end
# cleanly, "storage is full" in its record, instead of staying "running".
# KEYS: job, lease. ARGV: token, status, now, error, id, warning ('' for none).
_FINISH = _LUA_HELPERS + f"""
if not owns(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[2])
redis.call('ZREM', LEASES, ARGV[5])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3], 'error', ARGV[4], 'eta_seconds', '')
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'warning', ARGV[6]) end
local st = ARGV[2]
if {_TERMINAL_LUA} then release_quota(KEYS[1], ARGV[5]) end
announce(ARGV[5])
return 1
"""

# KEYS: job, lease. ARGV: token, id. The worker is shutting down: back to the queue, recovery resends it
# (its deadline is now: the next sweep finds it).
_SUSPEND = _LUA_HELPERS + """
if not owns(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[2])
redis.call('ZADD', LEASES, 0, ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'queued', 'eta_seconds', '', 'iterations_per_second', '',
           'interrupted_by', 'stop')
announce(ARGV[2])
return 1
"""

# Lua: the upgrade from the previous version's set of claimed jobs (`nca:jobs:active`): each member gets a
# deadline (its lease's end, or now when it has none) unless it has one; then the set goes.
_BACKFILL_LUA = """
local function backfill(legacy, now)
  local ids = redis.call('SMEMBERS', legacy)
  for _, id in ipairs(ids) do
    local ttl = redis.call('PTTL', JOB_PREFIX .. id .. ':lease')
    redis.call('ZADD', LEASES, 'NX', ttl > 0 and now + ttl or now, id)
  end
  redis.call('DEL', legacy)
  return #ids
end
"""

# KEYS: the legacy active set. ARGV: Redis uptime in ms, batch size, a job to leave alone ('' for none).
# The due entries of `nca:leases` (deadline passed), at most a batch, oldest deadline first. Each is a
# claimed job whose lease expired: its worker is gone (still 'running'), or it gave the job back at shutdown
# or its resend failed ('queued'); it is re-queued and returned, its entry removed (so it is resent once).
# A running one is left alone within a lease's length of a Redis restart (its deadline moves to the end of
# that grace): every lease expired then, and live owners take theirs back first (owns()), so a long outage
# does not count as a lost worker. An entry whose lease is alive (renewed by a version that did not write
# deadlines) moves to the lease's end. Jobs a worker of the previous version claimed (in the legacy active
# set) get their deadline first. Returns {entries looked at, re-queued ids...}.
_SWEEP = _LUA_HELPERS + _BACKFILL_LUA + f"""
local now = now_ms()
if redis.call('EXISTS', KEYS[1]) == 1 then backfill(KEYS[1], now) end
local uptime = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {{#due}}
for _, id in ipairs(due) do
  local job = JOB_PREFIX .. id
  local ttl = redis.call('PTTL', job .. ':lease')
  local st = redis.call('HGET', job, 'status')
  local lease_ms = tonumber(redis.call('HGET', job, 'lease_ms') or '0') or 0
  if id == ARGV[3] then
    -- the caller's own job: alive, it takes its lease back
  elseif ttl > 0 then
    redis.call('ZADD', LEASES, now + ttl, id)
  elseif ttl == -1 then
    redis.call('ZADD', LEASES, now + math.max(lease_ms, 1000), id)  -- a lease with no expiry (by hand): later
  elseif not st or {_TERMINAL_LUA} then
    redis.call('ZREM', LEASES, id)
  elseif st == 'running' and uptime < lease_ms then
    redis.call('ZADD', LEASES, now + lease_ms - uptime, id)
  else
    redis.call('ZREM', LEASES, id)
    if st == 'running' then
      redis.call('HINCRBY', job, 'workers_lost', 1)
      redis.call('HSET', job, 'interrupted_by', 'worker_lost')
    end
    redis.call('HSET', job, 'status', 'queued', 'eta_seconds', '', 'iterations_per_second', '')
    announce(id, job)
    out[#out + 1] = id
  end
end
return out
"""

# KEYS: the legacy active set (`nca:jobs:active`). Upgrade in place: every job in it gets a deadline (its
# lease's end, or now when it has none), unless it has one already; then the set goes. Idempotent.
_BACKFILL = LUA_COMMON + _BACKFILL_LUA + """
return backfill(KEYS[1], now_ms())
"""


# KEYS: job. ARGV: field, value, ...: set on a record that still exists (a deleted job stays deleted).
_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return 1
"""

# KEYS: an election's key. ARGV: its holder. Given up only by the one holding it.
_RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

SCRIPTS = {"resign": _RESIGN, "set_if_exists": _SET_IF_EXISTS, "create": _CREATE, "queue_failed": _QUEUE_FAILED,
           "cancel": _CANCEL, "claim": _CLAIM, "refresh": _REFRESH,
           "progress": _PROGRESS, "checkpoint": _CHECKPOINT, "finish": _FINISH, "suspend": _SUSPEND,
           "sweep": _SWEEP, "backfill": _BACKFILL}
