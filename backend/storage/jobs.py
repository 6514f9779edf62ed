"""Training jobs in Redis: the record, the processed target, the latest checkpoint, the lease.

Every host (API, workers, stream) reads and writes jobs here only, so nothing needs a shared
filesystem. Key layout (docs/api.md, "Storage"):

    nca:jobs                 sorted set: job id -> created_at (listing, newest first)
    nca:jobs:active          set: jobs a worker has claimed and not finished (crash recovery)
    nca:job:<id>             hash: the job record (status, progress, its spec as `options`, ...)
    nca:job:<id>:target      safetensors bytes: the processed target tensor (4, H, W)
    nca:job:<id>:upload      the original upload (only when small)
    nca:job:<id>:model       model file bytes of the latest checkpoint
    nca:job:<id>:history     sorted set: the training history, iteration -> JSON {iteration, loss, at, version}
    nca:job:<id>:history:weights  hash: iteration -> the weights-only model file of that checkpoint
    nca:job:<id>:lease       token of the worker training it, with a TTL its heartbeat refreshes

The history holds every checkpoint up to a cap (`NCA_CHECKPOINT_HISTORY`), then is thinned evenly;
it is written in the same step as the checkpoint, so it always ends with the latest one.

Every change of a job is one method here and one Lua script, so each is atomic: create,
queue_failed, cancel (API side); claim, refresh_lease, progress, store_checkpoint, finish,
suspend (worker side, fenced by the lease token: a worker that lost its lease to another can no
longer write); recover_orphans (any worker). A script that changes the status of a job with a
checkpoint, or stores one, also publishes on CHECKPOINT_CHANNEL in the same step.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal

import redis
import torch
from pydantic import BaseModel, PrivateAttr
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from backend.config import CHECKPOINT_HISTORY
from backend.nca.jobspec import SPEC_VERSION, JobSpec

from .connection import text

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED = ("succeeded", "failed", "cancelled")
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
LOSS_HISTORY_POINTS = 200  # at most this many (iteration, loss) points are kept per job

JOBS_KEY = "nca:jobs"
ACTIVE_KEY = "nca:jobs:active"
# After each checkpoint, and when a job with a checkpoint changes status:
# {"model_id": <job id>, "version": <int>, "iteration": <int>, "status": <job status>}. The stream follows it.
CHECKPOINT_CHANNEL = "nca:checkpoints"
# Hash fields that are bookkeeping, not part of the record: the spec's version, the loss history's
# stride, and the claim (lease token and length) that lets an owner take back a lease that expired.
_INTERNAL_FIELDS = ("spec_version", "loss_every", "owner", "lease_ms")


def job_key(job_id: str, part: str | None = None) -> str:
    return f"nca:job:{job_id}" if part is None else f"nca:job:{job_id}:{part}"


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(value: str) -> bool:
    return re.fullmatch(JOB_ID_PATTERN, value) is not None


class JobNotFound(KeyError):
    """No job with this id."""


class Job(BaseModel):
    """The job record as stored; the API adds links. `spec` is the typed form of `options`."""

    id: str
    name: str
    status: JobStatus
    iteration: int = 0  # iterations of the model now training (back to the checkpoint after a lost worker)
    total: int
    loss: float | None = None
    loss_history: list[tuple[int, float]] = []  # (iteration, loss), downsampled
    iterations_per_second: float | None = None
    eta_seconds: float | None = None
    # With a time budget (options.minutes): the trainer's schedule as last re-planned (backend.nca.budget.Plan:
    # iterations, lr_decay_at, short_until, short_steps, steps, expected_seconds, ...); `total` follows it.
    plan: dict[str, Any] | None = None
    trained_seconds: float | None = None  # training wall time so far, all runs together (queue time not counted)
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    warning: str | None = None  # a problem that did not fail the job (e.g. the model export to disk failed)
    device: str | None = None
    worker: str | None = None
    options: dict[str, Any]  # JobSpec.options(): every job option and its value
    grid_height: int
    grid_width: int
    model_version: int = 0  # increases with each checkpoint
    checkpoint_iteration: int | None = None
    checkpoint_loss: float | None = None
    checkpoint_at: float | None = None
    attempts: int = 0  # times a worker started it (more than 1 after a worker loss or shutdown)
    workers_lost: int = 0  # times its worker vanished mid-run (crash, kill -9); shutdowns do not count
    resumed_from: list[int] = []  # checkpoint iterations this job was resumed from (after a stop or a worker loss)
    # Why its last run ended before the job did: "stop" (its worker was shut down and gave it back at a
    # checkpoint: Ctrl-C, a deploy) or "worker_lost" (the worker vanished: a crash, kill -9).
    interrupted_by: Literal["stop", "worker_lost"] | None = None
    cancel_requested: bool = False
    _spec: JobSpec = PrivateAttr()
    _loss_every: int = PrivateAttr(1)

    @property
    def spec(self) -> JobSpec:
        return self._spec

    @property
    def loss_every(self) -> int:
        """The loss history's stride (LossHistory.every), so that a resumed run keeps adding evenly."""
        return self._loss_every

    @classmethod
    def from_hash(cls, raw: dict) -> Job:
        """Parse a stored record; its spec strictly (a spec stored before JobSpec existed is migrated)."""
        fields = {text(k): text(v) for k, v in raw.items()}
        for name in ("loss_history", "options", "resumed_from", "plan"):
            if fields.get(name):
                fields[name] = json.loads(fields[name])
        fields["cancel_requested"] = fields.get("cancel_requested") == "1"
        for name in ("loss", "iterations_per_second", "eta_seconds", "plan", "trained_seconds", "started_at",
                     "finished_at", "error", "warning", "device", "worker", "checkpoint_iteration", "checkpoint_loss",
                     "checkpoint_at", "interrupted_by"):
            if fields.get(name) == "":
                fields[name] = None
        version = int(fields.get("spec_version") or 1)
        options = fields["options"] if version > 1 else {"name": fields.get("name", ""), **fields["options"]}
        spec = JobSpec.from_stored(options, version)
        loss_every = int(fields.get("loss_every") or 1)
        for name in _INTERNAL_FIELDS:
            fields.pop(name, None)
        job = cls.model_validate({**fields, "options": spec.options()})
        job._spec, job._loss_every = spec, loss_every
        return job


class Checkpoint(BaseModel):
    """One checkpoint of a job's training history (its weights are stored beside it)."""

    iteration: int
    loss: float | None = None
    at: float  # unix seconds
    version: int  # the job's model_version when it was written


class LossHistory:
    """Loss every `every` iterations; when full, every other point goes and `every` doubles."""

    def __init__(self, points: Iterable[tuple[int, float]] = (), every: int = 1,
                 max_points: int = LOSS_HISTORY_POINTS):
        self.points, self.every, self.max_points = [tuple(p) for p in points], every, max_points

    def add(self, iteration: int, loss: float) -> None:
        if iteration % self.every:
            return
        self.points.append((iteration, loss))
        if len(self.points) > self.max_points:
            self.every *= 2
            self.points = [p for p in self.points if p[0] % self.every == 0]

    def truncate(self, last_iteration: int) -> None:
        """Forget points after the iteration a run starts from: they will be trained again."""
        self.points = [p for p in self.points if p[0] <= last_iteration]


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    return st_save({"tensor": t.detach().float().cpu().contiguous()})


def tensor_from_bytes(data: bytes) -> torch.Tensor:
    return st_load(data)["tensor"]


# --- the scripts --------------------------------------------------------------------------------

_TERMINAL_LUA = "st == 'succeeded' or st == 'failed' or st == 'cancelled'"

# Helpers for scripts whose KEYS[1] is the job hash and KEYS[2] its lease.
_LUA_HELPERS = f"""
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
  return true
end

-- Tell the stream services: a job with a model has a new checkpoint or status (others do not concern them).
local function announce(id)
  local version = tonumber(redis.call('HGET', KEYS[1], 'model_version') or '0') or 0
  if version > 0 then
    local iteration = tonumber(redis.call('HGET', KEYS[1], 'checkpoint_iteration') or '0') or 0
    local status = redis.call('HGET', KEYS[1], 'status')
    redis.call('PUBLISH', '{CHECKPOINT_CHANNEL}',
               cjson.encode({{model_id = id, version = version, iteration = iteration, status = status}}))
  end
end
"""

# KEYS: job, target, upload, index. ARGV: id, now, target bytes, upload bytes ('' for none), record field pairs.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
return 1
"""

# KEYS: job, lease. ARGV: now, error. Only a job no worker has claimed: its message could not be sent.
_QUEUE_FAILED = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[1], 'error', ARGV[2])
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
  announce(ARGV[2])
  return 'cancelled'
end
return 'requested'
"""

# KEYS: job, lease, active. ARGV: token, ttl_ms, id, now, device, worker.
_CLAIM = _LUA_HELPERS + f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if {_TERMINAL_LUA} then return st end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'busy' end
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'running', 'device', ARGV[5], 'worker', ARGV[6], 'owner', ARGV[1],
           'lease_ms', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if not redis.call('HGET', KEYS[1], 'started_at') then redis.call('HSET', KEYS[1], 'started_at', ARGV[4]) end
announce(ARGV[3])
return 'ok'
"""

# KEYS: job, lease, active. ARGV: token, ttl_ms, id.
_REFRESH = _LUA_HELPERS + """
if not owns(ARGV[1]) then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
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
local function thin(history, weights, cap)
  if redis.call('ZCARD', history) <= cap then return end
  local scored = redis.call('ZRANGE', history, 0, -1, 'WITHSCORES')
  local its = {}
  for i = 2, #scored, 2 do its[#its + 1] = scored[i] end
  while #its > cap do
    local drop, narrowest = nil, nil
    for i = 2, #its - 1 do
      local gap = tonumber(its[i + 1]) - tonumber(its[i - 1])
      if narrowest == nil or gap <= narrowest then drop, narrowest = i, gap end
    end
    redis.call('ZREMRANGEBYSCORE', history, its[drop], its[drop])
    redis.call('HDEL', weights, its[drop])
    table.remove(its, drop)
  end
end
"""

# KEYS: job, lease, model, history, history weights.
# ARGV: token, model bytes, iteration, loss ('' for none), now, id, weights bytes, history cap, loss as JSON.
# The new checkpoint replaces every history entry at its iteration or later: those belong to a run that
# was lost after them and are being trained again, so the history is always one line ending here.
_CHECKPOINT = _LUA_HELPERS + _THIN_LUA + """
if not owns(ARGV[1]) then return -1 end
redis.call('SET', KEYS[3], ARGV[2])
local version = redis.call('HINCRBY', KEYS[1], 'model_version', 1)
redis.call('HSET', KEYS[1], 'checkpoint_iteration', ARGV[3], 'checkpoint_loss', ARGV[4], 'checkpoint_at', ARGV[5],
           'iteration', ARGV[3], 'loss', ARGV[4])
local later = redis.call('ZRANGEBYSCORE', KEYS[4], ARGV[3], '+inf', 'WITHSCORES')
for i = 2, #later, 2 do redis.call('HDEL', KEYS[5], later[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[4], ARGV[3], '+inf')
redis.call('ZADD', KEYS[4], ARGV[3], '{"iteration":' .. ARGV[3] .. ',"loss":' .. ARGV[9] .. ',"at":' .. ARGV[5]
           .. ',"version":' .. version .. '}')
redis.call('HSET', KEYS[5], ARGV[3], ARGV[7])
thin(KEYS[4], KEYS[5], tonumber(ARGV[8]))
announce(ARGV[6])
return version
"""

# KEYS: job, lease, active. ARGV: token, status, now, error, id, warning ('' for none).
_FINISH = _LUA_HELPERS + """
if not owns(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3], 'error', ARGV[4], 'eta_seconds', '')
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'warning', ARGV[6]) end
redis.call('SREM', KEYS[3], ARGV[5])
redis.call('DEL', KEYS[2])
announce(ARGV[5])
return 1
"""

# KEYS: job, lease. ARGV: token, id. The worker is shutting down: back to the queue, recovery resends it.
_SUSPEND = _LUA_HELPERS + """
if not owns(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'eta_seconds', '', 'iterations_per_second', '',
           'interrupted_by', 'stop')
redis.call('DEL', KEYS[2])
announce(ARGV[2])
return 1
"""

# KEYS: job, lease, active. ARGV: id, Redis uptime in ms. A claimed job whose lease expired: its worker
# is gone (still 'running'), or it gave the job back at shutdown ('queued'). A running one is left alone
# within a lease's length of a Redis restart: every lease expired then, and live owners take theirs back
# first (owns()), so a long outage does not count as a lost worker.
_RECOVER = _LUA_HELPERS + f"""
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local st = redis.call('HGET', KEYS[1], 'status')
local lease_ms = tonumber(redis.call('HGET', KEYS[1], 'lease_ms') or '0') or 0
if st == 'running' and tonumber(ARGV[2]) < lease_ms then return 0 end
if redis.call('SREM', KEYS[3], ARGV[1]) == 0 then return 0 end
if not st or {_TERMINAL_LUA} then return 0 end
if st == 'running' then
  redis.call('HINCRBY', KEYS[1], 'workers_lost', 1)
  redis.call('HSET', KEYS[1], 'interrupted_by', 'worker_lost')
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'eta_seconds', '', 'iterations_per_second', '')
announce(ARGV[1])
return 1
"""


def _pairs(fields: dict[str, Any]) -> list[Any]:
    """Record fields as HSET arguments: None as '', lists and dicts as JSON."""
    flat: list[Any] = []
    for name, value in fields.items():
        flat += [name, "" if value is None else json.dumps(value) if isinstance(value, list | dict) else value]
    return flat


class JobStore:
    def __init__(self, client: redis.Redis, history_cap: int = CHECKPOINT_HISTORY):
        """`history_cap`: checkpoints a job's history keeps (NCA_CHECKPOINT_HISTORY), at least 2."""
        if history_cap < 2:
            raise ValueError("the checkpoint history keeps at least 2 checkpoints (the first and the latest)")
        self._client, self.history_cap = client, history_cap
        scripts = {"create": _CREATE, "queue_failed": _QUEUE_FAILED, "cancel": _CANCEL, "claim": _CLAIM,
                   "refresh": _REFRESH, "progress": _PROGRESS, "checkpoint": _CHECKPOINT, "finish": _FINISH,
                   "suspend": _SUSPEND, "recover": _RECOVER}
        self._scripts = {name: client.register_script(source) for name, source in scripts.items()}

    def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return self._scripts[script](keys=keys, args=args)

    # --- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        raw = self._client.hgetall(job_key(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return Job.from_hash(raw)

    def list(self, offset: int = 0, limit: int = 20) -> tuple[list[Job], int]:
        """Newest first; also the total number of jobs."""
        with self._client.pipeline(transaction=False) as pipe:
            pipe.zrevrange(JOBS_KEY, offset, offset + limit - 1)
            pipe.zcard(JOBS_KEY)
            ids, total = pipe.execute()
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(job_key(text(job_id)))
            rows = pipe.execute()
        return [Job.from_hash(raw) for raw in rows if raw], total

    def ids(self) -> list[str]:
        """Every job id, newest first."""
        return [text(j) for j in self._client.zrevrange(JOBS_KEY, 0, -1)]

    def summaries(self, job_ids: list[str], fields: tuple[str, ...]) -> list[Job]:
        """The records of the jobs that exist, read with only `fields` (plus what a Job needs): no loss history."""
        wanted = tuple(dict.fromkeys(("id", "name", "status", "total", "created_at", "options", "spec_version",
                                      "grid_height", "grid_width", *fields)))
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(job_key(job_id), wanted)
            rows = pipe.execute()
        records = ({name: value for name, value in zip(wanted, row, strict=True) if value is not None} for row in rows)
        return [Job.from_hash(record) for record in records if "status" in record]

    def model_version(self, job_id: str) -> int:
        """0 until the first checkpoint (or for an unknown job)."""
        return int(self._client.hget(job_key(job_id), "model_version") or 0)

    def target(self, job_id: str) -> torch.Tensor:
        data = self._client.get(job_key(job_id, "target"))
        if data is None:
            raise JobNotFound(job_id)
        return tensor_from_bytes(data)

    def checkpoint(self, job_id: str) -> bytes | None:
        """The model file of the latest checkpoint."""
        return self._client.get(job_key(job_id, "model"))

    def history(self, job_id: str) -> list[Checkpoint]:
        """The job's checkpoints, oldest first (empty for an unknown job or before the first checkpoint)."""
        return [Checkpoint.model_validate_json(m) for m in self._client.zrange(job_key(job_id, "history"), 0, -1)]

    def history_entry(self, job_id: str, iteration: int) -> Checkpoint | None:
        """The history's checkpoint at `iteration`, None if it has none there."""
        found = self._client.zrangebyscore(job_key(job_id, "history"), iteration, iteration)
        return Checkpoint.model_validate_json(found[0]) if found else None

    def history_weights(self, job_id: str, iteration: int) -> bytes | None:
        """The weights-only model file of the history's checkpoint at `iteration`."""
        return self._client.hget(job_key(job_id, "history:weights"), str(iteration))

    def cancel_requested(self, job_id: str) -> bool:
        return text(self._client.hget(job_key(job_id), "cancel_requested")) == "1"

    # --- API side ---------------------------------------------------------------------------

    def create(self, job_id: str, spec: JobSpec, target: torch.Tensor, upload: bytes | None = None,
               warning: str | None = None) -> Job:
        """A queued job training `spec` on `target` (4, H, W); `upload` is kept when given; `warning` says
        something the user should know about the target (e.g. its cut-out fell back to the whole image)."""
        now = time.time()
        _, height, width = target.shape
        record = {
            "id": job_id, "name": spec.name, "status": "queued", "iteration": 0, "total": spec.train.iterations,
            "created_at": now, "options": spec.options(), "spec_version": SPEC_VERSION, "grid_height": height,
            "grid_width": width, "model_version": 0, "loss_history": [], "loss_every": 1, "resumed_from": [],
            "warning": warning,
        }
        keys = [job_key(job_id), job_key(job_id, "target"), job_key(job_id, "upload"), JOBS_KEY]
        if not self._run("create", keys, [job_id, now, tensor_to_bytes(target), upload or b"", *_pairs(record)]):
            raise ValueError(f"job {job_id} exists already")
        return self.get(job_id)

    def queue_failed(self, job_id: str, error: str) -> bool:
        """Fail a job whose message could not be sent (it would wait forever); False if a worker has it."""
        return bool(self._run("queue_failed", [job_key(job_id), job_key(job_id, "lease")], [time.time(), error]))

    def cancel(self, job_id: str) -> str:
        """'cancelled' (it was queued), 'requested' (the worker stops soon) or 'finished' (nothing to cancel)."""
        outcome = text(self._run("cancel", [job_key(job_id), job_key(job_id, "lease")], [time.time(), job_id]))
        if outcome == "missing":
            raise JobNotFound(job_id)
        return outcome

    # --- worker side (fenced by the lease token) --------------------------------------------

    def claim(self, job_id: str, token: str, lease_seconds: float, device: str, worker: str) -> str:
        """'ok' when this worker now owns the job; else why not: 'busy', 'missing' or a finished status."""
        keys = [job_key(job_id), job_key(job_id, "lease"), ACTIVE_KEY]
        args = [token, int(lease_seconds * 1000), job_id, time.time(), device, worker]
        return text(self._run("claim", keys, args))

    def refresh_lease(self, job_id: str, token: str, lease_seconds: float) -> bool:
        keys = [job_key(job_id), job_key(job_id, "lease"), ACTIVE_KEY]
        return bool(self._run("refresh", keys, [token, int(lease_seconds * 1000), job_id]))

    def progress(self, job_id: str, token: str, iteration: int, history: LossHistory, loss: float | None = None,
                 iterations_per_second: float | None = None, eta_seconds: float | None = None,
                 resumed_from: list[int] | None = None, total: int | None = None, plan: dict | None = None,
                 trained_seconds: float | None = None) -> bool:
        """Where training is; None leaves a field as it is. `resumed_from` at the start of a run; `total` and
        `plan` as a time budget's plan changes them."""
        fields: dict[str, Any] = {"iteration": iteration, "loss_history": history.points, "loss_every": history.every}
        optional = {"loss": loss, "total": total, "plan": plan, "trained_seconds": trained_seconds}
        fields.update({name: value for name, value in optional.items() if value is not None})
        if iterations_per_second is not None:
            fields.update(iterations_per_second=iterations_per_second, eta_seconds=eta_seconds)
        if resumed_from is not None:
            fields["resumed_from"] = resumed_from
        return bool(self._run("progress", [job_key(job_id), job_key(job_id, "lease")], [token, *_pairs(fields)]))

    def store_checkpoint(self, job_id: str, token: str, model_bytes: bytes, iteration: int,
                         loss: float | None, weights: bytes | None = None) -> int:
        """Store the model file, add `weights` (its weights-only file; default: `model_bytes`) to the
        history and bump the version, in one step; the new version, or -1 when the lease was lost."""
        keys = [job_key(job_id), job_key(job_id, "lease"), job_key(job_id, "model"), job_key(job_id, "history"),
                job_key(job_id, "history:weights")]
        loss_json = json.dumps(loss) if loss is not None and math.isfinite(loss) else "null"
        args = [token, model_bytes, int(iteration), "" if loss is None else loss, time.time(), job_id,
                model_bytes if weights is None else weights, self.history_cap, loss_json]
        return int(self._run("checkpoint", keys, args))

    def finish(self, job_id: str, token: str, status: JobStatus, error: str | None = None,
               warning: str | None = None) -> bool:
        keys = [job_key(job_id), job_key(job_id, "lease"), ACTIVE_KEY]
        return bool(self._run("finish", keys, [token, status, time.time(), error or "", job_id, warning or ""]))

    def suspend(self, job_id: str, token: str) -> bool:
        """Give the job back (worker shutdown); it stays in the active set for recovery to resend."""
        return bool(self._run("suspend", [job_key(job_id), job_key(job_id, "lease")], [token, job_id]))

    def recover_orphans(self, skip: str | None = None) -> list[str]:
        """Jobs claimed by a worker whose lease expired, now marked queued again: resend them.

        `skip`: a job to leave alone (the caller's own: it is alive and takes its lease back).
        """
        uptime_ms = (int(self._client.info("server")["uptime_in_seconds"]) + 1) * 1000  # whole seconds: at most
        recovered = []
        for raw in self._client.smembers(ACTIVE_KEY):
            job_id = text(raw)
            if job_id == skip:
                continue
            keys = [job_key(job_id), job_key(job_id, "lease"), ACTIVE_KEY]
            if self._run("recover", keys, [job_id, uptime_ms]):
                recovered.append(job_id)
        return recovered

    def mark_orphan(self, *job_ids: str) -> None:
        """Put jobs back for recovery (their resend failed)."""
        self._client.sadd(ACTIVE_KEY, *job_ids)
