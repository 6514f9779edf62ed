"""Training jobs in Redis: the record, the processed target, the latest checkpoint, the lease.

Every host (API, workers, stream) reads and writes jobs here only, so nothing needs a shared
filesystem. Key layout (docs/api.md, "Storage"):

    nca:jobs                 sorted set: job id -> created_at (listing, newest first)
    nca:jobs:active          set: jobs a worker has claimed and not finished (crash recovery)
    nca:job:<id>             hash: the job record (status, progress, options, ...)
    nca:job:<id>:target      safetensors bytes: the processed target tensor (4, H, W)
    nca:job:<id>:upload      the original upload (only when small)
    nca:job:<id>:model       model file bytes of the latest checkpoint
    nca:job:<id>:lease       token of the worker training it, with a TTL its heartbeat refreshes

State changes that race (claim, cancel, checkpoint, finish, recovery) are Lua scripts, so each
is atomic, and the worker-side ones are fenced by the lease token: a worker that lost its
lease (it stalled and another took over) can no longer write.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal

import redis
import torch
from pydantic import BaseModel
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .connection import text

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED = ("succeeded", "failed", "cancelled")
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
LOSS_HISTORY_POINTS = 200  # at most this many (iteration, loss) points are kept per job

JOBS_KEY = "nca:jobs"
ACTIVE_KEY = "nca:jobs:active"


def job_key(job_id: str, part: str | None = None) -> str:
    return f"nca:job:{job_id}" if part is None else f"nca:job:{job_id}:{part}"


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(value: str) -> bool:
    return re.fullmatch(JOB_ID_PATTERN, value) is not None


class JobNotFound(KeyError):
    """No job with this id."""


class Job(BaseModel):
    """The job record as stored; the API adds links."""

    id: str
    name: str
    status: JobStatus
    iteration: int = 0
    total: int
    loss: float | None = None
    loss_history: list[tuple[int, float]] = []  # (iteration, loss), downsampled
    iterations_per_second: float | None = None
    eta_seconds: float | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    warning: str | None = None  # a problem that did not fail the job (e.g. the model export to disk failed)
    device: str | None = None
    worker: str | None = None
    options: dict[str, Any]
    grid_height: int
    grid_width: int
    model_version: int = 0  # increases with each checkpoint
    checkpoint_iteration: int | None = None
    checkpoint_loss: float | None = None
    checkpoint_at: float | None = None
    attempts: int = 0  # times a worker started it (more than 1 after a worker loss or shutdown)
    workers_lost: int = 0  # times its worker vanished mid-run (crash, kill -9); shutdowns do not count
    resumed_from: list[int] = []  # checkpoint iterations this job was resumed from after a worker loss
    cancel_requested: bool = False

    @classmethod
    def from_hash(cls, raw: dict) -> Job:
        fields = {text(k): text(v) for k, v in raw.items()}
        for name in ("loss_history", "options", "resumed_from"):
            if name in fields:
                fields[name] = json.loads(fields[name])
        fields["cancel_requested"] = fields.get("cancel_requested") == "1"
        for name in ("loss", "iterations_per_second", "eta_seconds", "started_at", "finished_at", "error", "warning",
                     "device", "worker", "checkpoint_iteration", "checkpoint_loss", "checkpoint_at"):
            if fields.get(name) == "":
                fields[name] = None
        fields.pop("loss_every", None)
        return cls.model_validate(fields)


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
        """Forget points after a checkpoint we resume from: they will be trained again."""
        self.points = [p for p in self.points if p[0] <= last_iteration]


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    return st_save({"tensor": t.detach().float().cpu().contiguous()})


def tensor_from_bytes(data: bytes) -> torch.Tensor:
    return st_load(data)["tensor"]


_TERMINAL_LUA = "st == 'succeeded' or st == 'failed' or st == 'cancelled'"

# KEYS: job, lease, active. ARGV: token, ttl_ms, id, now, device, worker.
_CLAIM = f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if {_TERMINAL_LUA} then return st end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'busy' end
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'running', 'device', ARGV[5], 'worker', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if not redis.call('HGET', KEYS[1], 'started_at') then redis.call('HSET', KEYS[1], 'started_at', ARGV[4]) end
return 'ok'
"""

# KEYS: lease, active. ARGV: token, ttl_ms, id.
_REFRESH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""

# KEYS: job, lease, model. ARGV: token, model bytes, iteration, loss, now.
_CHECKPOINT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[3], ARGV[2])
local version = redis.call('HINCRBY', KEYS[1], 'model_version', 1)
redis.call('HSET', KEYS[1], 'checkpoint_iteration', ARGV[3], 'checkpoint_loss', ARGV[4], 'checkpoint_at', ARGV[5],
           'iteration', ARGV[3], 'loss', ARGV[4])
return version
"""

# KEYS: job, lease, active. ARGV: token, status, now, error, id.
_FINISH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3], 'error', ARGV[4], 'eta_seconds', '')
redis.call('SREM', KEYS[3], ARGV[5])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: job, lease. ARGV: token. The worker is shutting down: back to the queue, recovery resends it.
_SUSPEND = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'eta_seconds', '', 'iterations_per_second', '')
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: job, lease, active. ARGV: id. A claimed job whose lease expired: its worker is gone (still
# 'running'), or it gave the job back at shutdown ('queued').
_RECOVER = f"""
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SREM', KEYS[3], ARGV[1]) == 0 then return 0 end
local st = redis.call('HGET', KEYS[1], 'status')
if not st or {_TERMINAL_LUA} then return 0 end
if st == 'running' then redis.call('HINCRBY', KEYS[1], 'workers_lost', 1) end
redis.call('HSET', KEYS[1], 'status', 'queued', 'eta_seconds', '', 'iterations_per_second', '')
return 1
"""

# KEYS: job, lease. ARGV: now.
_CANCEL = f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if {_TERMINAL_LUA} then return 'finished' end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
if st == 'queued' and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  return 'cancelled'
end
return 'requested'
"""


class JobStore:
    def __init__(self, client: redis.Redis):
        self.client = client
        self._claim = client.register_script(_CLAIM)
        self._refresh = client.register_script(_REFRESH)
        self._checkpoint = client.register_script(_CHECKPOINT)
        self._finish = client.register_script(_FINISH)
        self._suspend = client.register_script(_SUSPEND)
        self._recover = client.register_script(_RECOVER)
        self._cancel = client.register_script(_CANCEL)

    # --- API side -------------------------------------------------------------------------

    def create(self, job_id: str, name: str, options: dict[str, Any], total: int, target: torch.Tensor,
               upload: bytes | None = None, warning: str | None = None) -> Job:
        now = time.time()
        _, height, width = target.shape
        record = {
            "id": job_id, "name": name, "status": "queued", "iteration": 0, "total": total,
            "created_at": now, "options": json.dumps(options), "grid_height": height, "grid_width": width,
            "model_version": 0, "loss_history": "[]", "loss_every": 1, "resumed_from": "[]", "warning": warning or "",
        }
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(job_key(job_id, "target"), tensor_to_bytes(target))
            if upload is not None:
                pipe.set(job_key(job_id, "upload"), upload)
            pipe.hset(job_key(job_id), mapping=record)
            pipe.zadd(JOBS_KEY, {job_id: now})
            pipe.execute()
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        raw = self.client.hgetall(job_key(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return Job.from_hash(raw)

    def list(self, offset: int = 0, limit: int = 20) -> tuple[list[Job], int]:
        """Newest first; also the total number of jobs."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zrevrange(JOBS_KEY, offset, offset + limit - 1)
            pipe.zcard(JOBS_KEY)
            ids, total = pipe.execute()
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(job_key(text(job_id)))
            rows = pipe.execute()
        return [Job.from_hash(raw) for raw in rows if raw], total

    def cancel(self, job_id: str) -> str:
        """'cancelled' (it was queued), 'requested' (the worker stops soon) or 'finished' (nothing to cancel)."""
        outcome = text(self._cancel(keys=[job_key(job_id), job_key(job_id, "lease")], args=[time.time()]))
        if outcome == "missing":
            raise JobNotFound(job_id)
        return outcome

    def target(self, job_id: str) -> torch.Tensor:
        data = self.client.get(job_key(job_id, "target"))
        if data is None:
            raise JobNotFound(job_id)
        return tensor_from_bytes(data)

    def checkpoint(self, job_id: str) -> bytes | None:
        return self.client.get(job_key(job_id, "model"))

    # --- worker side (fenced by the lease token) -----------------------------------------

    def claim(self, job_id: str, token: str, lease_seconds: float, device: str, worker: str) -> str:
        """'ok' when this worker now owns the job; else why not: 'busy', 'missing' or a finished status."""
        keys = [job_key(job_id), job_key(job_id, "lease"), ACTIVE_KEY]
        args = [token, int(lease_seconds * 1000), job_id, time.time(), device, worker]
        return text(self._claim(keys=keys, args=args))

    def refresh_lease(self, job_id: str, token: str, lease_seconds: float) -> bool:
        keys = [job_key(job_id, "lease"), ACTIVE_KEY]
        return bool(self._refresh(keys=keys, args=[token, int(lease_seconds * 1000), job_id]))

    def update(self, job_id: str, **fields: Any) -> None:
        mapping = {k: "" if v is None else json.dumps(v) if isinstance(v, list | dict) else v
                   for k, v in fields.items()}
        self.client.hset(job_key(job_id), mapping=mapping)

    def cancel_requested(self, job_id: str) -> bool:
        return text(self.client.hget(job_key(job_id), "cancel_requested")) == "1"

    def store_checkpoint(self, job_id: str, token: str, model_bytes: bytes, iteration: int,
                         loss: float | None) -> int:
        """Store the model file and bump the version in one step; -1 when the lease was lost."""
        keys = [job_key(job_id), job_key(job_id, "lease"), job_key(job_id, "model")]
        args = [token, model_bytes, iteration, "" if loss is None else loss, time.time()]
        return int(self._checkpoint(keys=keys, args=args))

    def finish(self, job_id: str, token: str, status: JobStatus, error: str | None = None) -> bool:
        keys = [job_key(job_id), job_key(job_id, "lease"), ACTIVE_KEY]
        return bool(self._finish(keys=keys, args=[token, status, time.time(), error or "", job_id]))

    def suspend(self, job_id: str, token: str) -> bool:
        """Give the job back (worker shutdown); it stays in the active set for recovery to resend."""
        return bool(self._suspend(keys=[job_key(job_id), job_key(job_id, "lease")], args=[token]))

    def recover_orphans(self) -> list[str]:
        """Jobs claimed by a worker whose lease expired, now marked queued again: resend them."""
        recovered = []
        for raw in self.client.smembers(ACTIVE_KEY):
            job_id = text(raw)
            if self._recover(keys=[job_key(job_id), job_key(job_id, "lease"), ACTIVE_KEY], args=[job_id]):
                recovered.append(job_id)
        return recovered

    def mark_orphan(self, *job_ids: str) -> None:
        """Put jobs back for recovery (their resend failed)."""
        self.client.sadd(ACTIVE_KEY, *job_ids)
