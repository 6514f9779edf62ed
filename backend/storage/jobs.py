"""Training jobs: the record, indexes and the lease in Redis; the files in the artifact store.

Every host (API, workers, stream) reads and writes jobs here only, so nothing needs a shared
filesystem. Where each part lives is the key table of backend.storage.keys (docs/api.md, "Storage").
The processed target, the latest checkpoint and the history's weights are objects of the artifact store
(backend.storage.artifacts, `<job id>/...`): each is written first, then the record points at it with its
SHA-256 (verified on read). Jobs stored by an earlier version (blobs in Redis) are read through and
moved by `migrate` (run at start).
The record is one hash; its fields are `Job`'s, declared once there: `RecordCodec` reads the field
types to encode and decode them (lists and dicts as JSON, None as '', flags as '1'), beside the
bookkeeping fields the scripts use (`BOOKKEEPING_FIELDS`).

The history holds every checkpoint up to a cap (`NCA_CHECKPOINT_HISTORY`), then is thinned evenly;
it is written in the same step as the checkpoint, so it always ends with the latest one.

Every change of a job is one method here and one Lua script (backend.storage.job_scripts), so each
is atomic: create, queue_failed, cancel (API side); claim, refresh_lease, progress,
store_checkpoint, finish, suspend (worker side, fenced by the lease token: a worker that lost its
lease to another can no longer write); recover_orphans (one script for every due lease: the elected
sweeper, backend/worker/lifecycle.py, and a worker taking a job). A script that changes the
status of a job with a checkpoint, or stores one, also publishes on CHECKPOINT_CHANNEL in the same step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import time
import types
import typing
import uuid
from typing import Annotated, Any, Literal, Protocol, get_args, get_origin

import redis
import torch
from pydantic import AliasChoices, BaseModel, Field, PlainSerializer, PlainValidator, PrivateAttr, WithJsonSchema

from backend.config import CHECKPOINT_HISTORY, CHECKPOINT_HISTORY_BYTES, Settings
from backend.nca.jobspec import SPEC_VERSION, JobSpec
from backend.nca.train import Progress

from . import keys
from .artifacts import (
    EXAMPLE_RENDERS,
    ArtifactError,
    ArtifactMissing,
    ArtifactStore,
    artifacts_from_settings,
    render_digest,
    sha256,
)
from .connection import is_storage_full, text
from .job_scripts import SCRIPTS
from .keys import job_key
from .listing import IndexSource
from .status import FINISHED, JobStatus
from .tensors import tensor_from_bytes, tensor_to_bytes

__all__ = ["ACTIVE_KEY", "CHECKPOINT_CHANNEL", "FINISHED", "JOBS_KEY", "LEASES_KEY", "Checkpoint", "Job", "JobNotFound",
           "JobStatus", "JobStore", "is_job_id", "job_key", "new_job_id"]

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"

JOBS_KEY = keys.JOBS.pattern
ACTIVE_KEY = keys.JOBS_ACTIVE.pattern  # legacy: the claimed jobs before LEASES_KEY (moved there by `backfill_leases`)
LEASES_KEY = keys.LEASES.pattern  # claimed jobs -> lease deadline (ms, Redis clock)
SWEEP_BATCH = 200  # due leases one sweep script handles; a sweep runs scripts until fewer are due
# After each checkpoint, and when a job with a checkpoint changes status:
# {"model_id": <job id>, "version": <int>, "iteration": <int>, "status": <job status>}. The stream follows it.
CHECKPOINT_CHANNEL = keys.CHECKPOINTS_CHANNEL.pattern
# Hash fields that are bookkeeping, not part of the record: the spec's version, the loss history's
# stride, and the claim (lease token and length) that lets an owner take back a lease that expired.
# The artifact pointers (key and SHA-256 of the target, the upload, the latest model file) are bookkeeping too.
BOOKKEEPING_FIELDS = ("spec_version", "loss_every", "owner", "lease_ms", "target_bytes", "upload_bytes", "model_bytes",
                      "weights_bytes", "target_sha256", "upload_sha256",
                      "model_key", "model_sha256", "quota_tags")


def new_job_id() -> str:
    return uuid.uuid4().hex


def _live_render(key: str, digests: set[str]) -> bool:
    """A cached render of a model file the job still has (the sweep keeps it; one of a superseded file goes)."""
    return render_digest(key) in digests


def is_job_id(value: str) -> bool:
    return re.fullmatch(JOB_ID_PATTERN, value) is not None


class JobNotFound(KeyError):
    """No job with this id."""


def _read_spec(value: Any) -> JobSpec:
    """The record's spec: as it is, or from its stored form (every option named, this SPEC_VERSION)."""
    return value if isinstance(value, JobSpec) else JobSpec.from_options(value, complete=True)


# The job's spec, held as the JobSpec it is; stored (hash field `options`, beside `spec_version`) and
# answered by the API as its options, each with its value (JobSpec.options()).
StoredSpec = Annotated[JobSpec, PlainValidator(_read_spec), PlainSerializer(JobSpec.options, return_type=dict),
                       WithJsonSchema({"type": "object", "description": "every job option and its value"})]


class Job(BaseModel):
    """The job record as stored; the API adds links."""

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
    spec: StoredSpec = Field(validation_alias=AliasChoices("spec", "options"), serialization_alias="options")
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
    finished_early: str | None = None  # why it succeeded before its total (early_stop_patience), in words
    _loss_every: int = PrivateAttr(1)

    @property
    def loss_every(self) -> int:
        """The loss history's stride (LossHistory.every), so that a resumed run keeps adding evenly."""
        return self._loss_every

    @classmethod
    def from_hash(cls, raw: dict) -> Job:
        """Parse a stored record; its spec strictly (a spec stored before JobSpec existed is migrated)."""
        fields = RecordCodec.decode(raw)
        version = int(fields.pop("spec_version", None) or 1)
        loss_every = int(fields.pop("loss_every", None) or 1)
        for name in BOOKKEEPING_FIELDS:
            fields.pop(name, None)
        options = fields.pop("options")
        options = options if version > 1 else {"name": fields.get("name", ""), **options}
        job = cls.model_validate({**fields, "spec": JobSpec.from_stored(options, version)})
        job._loss_every = loss_every
        return job


class Checkpoint(BaseModel):
    """One checkpoint of a job's training history (its weights are stored beside it)."""

    iteration: int
    loss: float | None = None
    at: float  # unix seconds
    version: int  # the job's model_version when it was written


class RecordCodec:
    """The record's hash encoding, read off `Job`'s field types so that the schema is written once:
    a list, tuple or dict field is JSON, a bool is '1' or '0', None is '' (for a field that allows it)."""

    JSON, FLAG, PLAIN = "json", "flag", "plain"

    @staticmethod
    def kind(annotation: Any) -> tuple[str, bool]:
        """(how a field of this type is stored, whether it may be None)."""
        union = get_origin(annotation) in (typing.Union, types.UnionType)
        args = get_args(annotation) if union else (annotation,)
        nullable = type(None) in args
        base = next(a for a in args if a is not type(None))
        base = get_origin(base) or base
        if base in (list, tuple, dict) or dataclasses.is_dataclass(base):
            return RecordCodec.JSON, nullable
        return (RecordCodec.FLAG if base is bool else RecordCodec.PLAIN), nullable

    @classmethod
    def fields(cls) -> dict[str, tuple[str, bool]]:
        return {info.serialization_alias or name: cls.kind(info.annotation) for name, info in Job.model_fields.items()}

    @classmethod
    def encode(cls, values: dict[str, Any]) -> list[Any]:
        """Record fields (bookkeeping ones too) as HSET arguments."""
        flat: list[Any] = []
        for name, value in values.items():
            kind = _FIELD_KINDS.get(name, (cls.PLAIN, True))[0]
            if value is None:
                value = ""
            elif kind == cls.JSON:
                value = json.dumps(value.options() if isinstance(value, JobSpec) else value)
            elif kind == cls.FLAG:
                value = "1" if value else "0"
            flat += [name, value]
        return flat

    @classmethod
    def decode(cls, raw: dict) -> dict[str, Any]:
        """A stored hash (bytes or text) as values for `Job`, bookkeeping fields left as text."""
        fields: dict[str, Any] = {}
        for key, stored in raw.items():
            name, value = text(key), text(stored)
            kind, nullable = _FIELD_KINDS.get(name, (cls.PLAIN, False))
            if value == "" and nullable:
                fields[name] = None
            elif kind == cls.JSON:
                fields[name] = json.loads(value)
            elif kind == cls.FLAG:
                fields[name] = value == "1"
            else:
                fields[name] = value
        return fields


_FIELD_KINDS = RecordCodec.fields()


class LossPoints(Protocol):
    """What the store needs of the worker's loss history (backend.worker.losses.LossHistory)."""

    points: list
    every: int


class JobStore:
    def __init__(self, client: redis.Redis, history_cap: int = CHECKPOINT_HISTORY,
                 artifacts: ArtifactStore | None = None, history_bytes: int = CHECKPOINT_HISTORY_BYTES):
        """`history_cap`: checkpoints a job's history keeps (NCA_CHECKPOINT_HISTORY), at least 2.
        `artifacts`: where the files go; default: the one the environment's settings name (NCA_ARTIFACTS).
        `history_bytes`: the most bytes of weights the history keeps (NCA_CHECKPOINT_HISTORY_BYTES)."""
        if history_cap < 2:
            raise ValueError("the checkpoint history keeps at least 2 checkpoints (the first and the latest)")
        self._client, self.history_cap, self.history_bytes = client, history_cap, history_bytes
        self.artifacts = artifacts if artifacts is not None else artifacts_from_settings(Settings())
        self._scripts = {name: client.register_script(source) for name, source in SCRIPTS.items()}

    def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script; a write refused inside it for memory raises OutOfMemoryError, as a plain command's does
        (Redis reports it as a script error), so the API says "storage is full" and a run ends cleanly."""
        try:
            return self._scripts[script](keys=keys, args=args)
        except redis.exceptions.ResponseError as exc:
            if is_storage_full(exc) and not isinstance(exc, redis.exceptions.OutOfMemoryError):
                raise redis.exceptions.OutOfMemoryError(str(exc)) from exc
            raise

    # --- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        raw = self._client.hgetall(job_key(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return Job.from_hash(raw)

    def index(self) -> IndexSource:
        """Every job, newest first, to read a page at a time (the operator's listings; backend.storage.listing)."""
        return IndexSource(self._client, JOBS_KEY)

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

    def get_many(self, job_ids: list[str]) -> list[Job]:
        """The records of the jobs that exist, in the order asked (one round trip)."""
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(job_key(job_id))
            rows = pipe.execute()
        return [Job.from_hash(raw) for raw in rows if raw]

    def peek(self, job_ids: list[str], fields: tuple[str, ...]) -> list[dict[str, str] | None]:
        """Raw `fields` of each job, aligned with `job_ids` (None: no such job), in one round trip: what a
        listing's filter reads (backend.storage.listing) before it builds whole records for the rows it keeps."""
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(job_key(job_id), ("status", *fields))
            rows = pipe.execute()
        return [None if row[0] is None else {name: text(value) or "" for name, value in zip(fields, row[1:],
                                                                                           strict=True)}
                for row in rows]

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

    def _pointers(self, job_id: str, *fields: str) -> list[str | None]:
        return [None if v is None or v == b"" else text(v) for v in self._client.hmget(job_key(job_id), fields)]

    def target(self, job_id: str) -> torch.Tensor:
        """The processed target (ArtifactMissing / ArtifactCorrupt when its object is lost or damaged)."""
        digest, status = self._pointers(job_id, "target_sha256", "status")
        if digest is not None:
            return tensor_from_bytes(self.artifacts.get(f"{job_id}/target", digest))
        data = self._client.get(job_key(job_id, "target"))  # a job stored before the artifact store
        if data is None:
            if status is not None:
                raise ArtifactMissing(f"{job_id}/target", "the job's target is missing")
            raise JobNotFound(job_id)
        return tensor_from_bytes(data)

    def checkpoint(self, job_id: str) -> bytes | None:
        """The model file of the latest checkpoint (None before the first)."""
        key, digest = self._pointers(job_id, "model_key", "model_sha256")
        if key is not None:
            return self.artifacts.get(key, digest)
        return self._client.get(job_key(job_id, "model"))  # a job stored before the artifact store

    def history(self, job_id: str) -> list[Checkpoint]:
        """The job's checkpoints, oldest first (empty for an unknown job or before the first checkpoint)."""
        return [Checkpoint.model_validate_json(m) for m in self._client.zrange(job_key(job_id, "history"), 0, -1)]

    def _history_member(self, job_id: str, iteration: int) -> dict | None:
        found = self._client.zrangebyscore(job_key(job_id, "history"), iteration, iteration)
        return json.loads(found[0]) if found else None

    def history_entry(self, job_id: str, iteration: int) -> Checkpoint | None:
        """The history's checkpoint at `iteration`, None if it has none there."""
        member = self._history_member(job_id, iteration)
        return None if member is None else Checkpoint.model_validate(member)

    def history_weights(self, job_id: str, iteration: int) -> bytes | None:
        """The weights-only model file of the history's checkpoint at `iteration`."""
        member = self._history_member(job_id, iteration)
        if member is not None and member.get("sha256"):
            return self.artifacts.get(self._weights_key(job_id, iteration, member["sha256"]), member["sha256"])
        return self._client.hget(job_key(job_id, "history:weights"), str(iteration))  # stored before the store

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
            "created_at": now, "options": spec, "spec_version": SPEC_VERSION, "grid_height": height,
            "grid_width": width, "model_version": 0, "loss_history": [], "loss_every": 1, "resumed_from": [],
            "warning": warning,
        }
        target_bytes = tensor_to_bytes(target)
        record["target_sha256"] = self.artifacts.put(f"{job_id}/target", target_bytes)
        record["target_bytes"] = len(target_bytes)  # sizes, for the owner's storage quota (backend/storage/quota.py)
        if upload:
            record["upload_sha256"] = self.artifacts.put(f"{job_id}/upload", upload)
            record["upload_bytes"] = len(upload)
        if not self._run("create", [job_key(job_id), JOBS_KEY], [job_id, now, *RecordCodec.encode(record)]):
            raise ValueError(f"job {job_id} exists already")
        return self.get(job_id)

    def queue_failed(self, job_id: str, error: str) -> bool:
        """Fail a job whose message could not be sent (it would wait forever); False if a worker has it."""
        keys = [job_key(job_id), job_key(job_id, "lease")]
        return bool(self._run("queue_failed", keys, [time.time(), error, job_id]))

    def cancel(self, job_id: str) -> str:
        """'cancelled' (it was queued), 'requested' (the worker stops soon) or 'finished' (nothing to cancel)."""
        outcome = text(self._run("cancel", [job_key(job_id), job_key(job_id, "lease")], [time.time(), job_id]))
        if outcome == "missing":
            raise JobNotFound(job_id)
        return outcome

    # --- worker side (fenced by the lease token) --------------------------------------------

    def claim(self, job_id: str, token: str, lease_seconds: float, device: str, worker: str) -> str:
        """'ok' when this worker now owns the job; else why not: 'busy', 'missing' or a finished status."""
        keys = [job_key(job_id), job_key(job_id, "lease")]
        args = [token, int(lease_seconds * 1000), job_id, time.time(), device, worker]
        return text(self._run("claim", keys, args))

    def refresh_lease(self, job_id: str, token: str, lease_seconds: float) -> bool:
        keys = [job_key(job_id), job_key(job_id, "lease")]
        return bool(self._run("refresh", keys, [token, int(lease_seconds * 1000), job_id]))

    def progress(self, job_id: str, token: str, progress: Progress, history: LossPoints,
                 resumed_from: list[int] | None = None) -> bool:
        """Where training is: the trainer's record and the worker's loss history (6 significant digits: a
        chart's precision, and Redis stays small), in one write (False: the lease is lost). What the record
        does not know yet (no loss, no measured rate) stays as it is;
        `resumed_from` at the start of a run."""
        fields: dict[str, Any] = {"iteration": progress.iteration, "total": progress.total,
                                  "loss_history": [(i, float(f"{loss:.6g}")) for i, loss in history.points],
                                  "loss_every": history.every,
                                  "trained_seconds": round(progress.trained_seconds, 1)}
        if progress.loss is not None and math.isfinite(progress.loss):
            fields["loss"] = progress.loss
        if progress.plan is not None:
            fields["plan"] = progress.plan.as_dict()
        if progress.iterations_per_second is not None:
            eta = progress.eta_seconds
            fields.update(iterations_per_second=round(progress.iterations_per_second, 3),
                          eta_seconds=None if eta is None else round(eta, 1))
        if progress.finished_early is not None:
            fields["finished_early"] = progress.finished_early
        if resumed_from is not None:
            fields["resumed_from"] = resumed_from
        args = [token, *RecordCodec.encode(fields)]
        return bool(self._run("progress", [job_key(job_id), job_key(job_id, "lease")], args))

    def store_checkpoint(self, job_id: str, token: str, model_bytes: bytes, iteration: int,
                         loss: float | None, weights: bytes | None = None) -> int:
        """Store the model file, add `weights` (its weights-only file; default: `model_bytes`) to the
        history and bump the version; the new version, or -1 when the lease was lost.

        The files go to the artifact store first, under fresh keys (the weights' is their SHA-256, the model
        file's a nonce: a reader never sees a half-replaced object), then one script points the record and
        the history at them; what nothing points at any
        more is deleted after (ArtifactUnavailable when the store cannot take the files: nothing changed)."""
        data = model_bytes if weights is None else weights
        weights_sha = self.artifacts.put(self._weights_key(job_id, iteration, sha256(data)), data)
        model_key = f"{job_id}/model/{iteration}-{uuid.uuid4().hex[:12]}"
        model_sha = self.artifacts.put(model_key, model_bytes)
        keys = [job_key(job_id), job_key(job_id, "lease"), job_key(job_id, "history"),
                job_key(job_id, "history:weights"), job_key(job_id, "model")]
        loss_json = json.dumps(loss) if loss is not None and math.isfinite(loss) else "null"
        args = [token, model_key, int(iteration), "" if loss is None else loss, round(time.time(), 3), job_id,
                model_sha, self.history_cap_for(len(data)), loss_json, weights_sha]
        version, *unused = self._run("checkpoint", keys, args)
        version = int(version)
        if version < 0:  # the lease is lost: the history's object stays if another run wrote the same weights
            self._discard([model_key])
        else:
            self._discard([text(k) if text(k).startswith(job_id) else f"{job_id}/{text(k)}" for k in unused])
            # Sizes for the owner's storage quota: every history entry's weights file is the same size.
            self._run("set_if_exists", [job_key(job_id)], ["model_bytes", len(model_bytes), "weights_bytes", len(data)])
        return version

    def history_cap_for(self, weights_bytes: int) -> int:
        """Entries the history keeps for weights files of this size: the count cap, or fewer when the byte cap
        binds first (every entry of a job is the same size), never fewer than 2 (the first and the latest)."""
        return max(2, min(self.history_cap, self.history_bytes // max(1, weights_bytes)))

    @staticmethod
    def _weights_key(job_id: str, iteration: int | str, digest: str) -> str:
        """A history entry's object: content-addressed, so the entry needs only its SHA-256 (Redis stays small)."""
        return f"{job_id}/history/{iteration}-{digest}"

    def _discard(self, artifact_keys: list[str]) -> None:
        """Delete objects nothing points at; best effort (the orphan sweep removes what is left)."""
        for key in artifact_keys:
            with contextlib.suppress(ArtifactError):
                self.artifacts.delete(key)

    def finish(self, job_id: str, token: str, status: JobStatus, error: str | None = None,
               warning: str | None = None) -> bool:
        keys = [job_key(job_id), job_key(job_id, "lease")]
        return bool(self._run("finish", keys, [token, status, time.time(), error or "", job_id, warning or ""]))

    def suspend(self, job_id: str, token: str) -> bool:
        """Give the job back (worker shutdown); its lease deadline becomes now, so recovery resends it."""
        return bool(self._run("suspend", [job_key(job_id), job_key(job_id, "lease")], [token, job_id]))

    def recover_orphans(self, skip: str | None = None) -> list[str]:
        """Jobs claimed by a worker whose lease expired, now marked queued again: resend them.

        Reads only the due entries of `nca:leases` (deadline passed), in batches of SWEEP_BATCH, one script
        each: a sweep with nothing due is two commands, however many jobs are active.
        `skip`: a job to leave alone (the caller's own: it is alive and takes its lease back).
        """
        uptime_ms = (int(self._client.info("server")["uptime_in_seconds"]) + 1) * 1000  # whole seconds: at most
        recovered: list[str] = []
        for _ in range(1000):  # bounded: each round re-scores or removes every entry it looked at but `skip`
            looked, *ids = self._run("sweep", [ACTIVE_KEY], [uptime_ms, SWEEP_BATCH, skip or ""])
            recovered += [text(i) for i in ids]
            if int(looked) < SWEEP_BATCH:
                break
        return recovered

    def backfill_leases(self) -> int:
        """Give every job in the legacy active set (claimed by a worker of the previous version) a lease deadline,
        then drop the set; how many it held. Idempotent; every sweep does it first when the set exists (a rolling
        upgrade: old workers still add to it)."""
        return int(self._run("backfill", [ACTIVE_KEY], []))

    def mark_orphan(self, *job_ids: str) -> None:
        """Put jobs back for recovery (their resend failed): due at once."""
        self._client.zadd(LEASES_KEY, dict.fromkeys(job_ids, 0))

    # --- the artifact store: upgrade in place, orphans ------------------------------------------

    def migrate(self, job_id: str) -> bool:
        """Move a job stored by an earlier version (target, upload, latest model and history weights as
        Redis blobs) to the artifact store; True when something moved. Each blob is written to the store
        first, then the record is pointed at it and the blob deleted in one transaction (WATCH: a worker
        that checkpoints meanwhile wins, the move is retried against what it wrote)."""
        record, legacy = job_key(job_id), {part: job_key(job_id, part) for part in ("target", "upload", "model")}
        weights_key, history_key = job_key(job_id, "history:weights"), job_key(job_id, "history")

        def move(pipe: redis.client.Pipeline) -> bool:
            target, upload, model = (pipe.get(key) for key in legacy.values())
            weights = pipe.hgetall(weights_key)
            members = pipe.zrange(history_key, 0, -1, withscores=True)
            if target is None and upload is None and model is None and not weights:
                return False
            fields: dict[str, str] = {}
            if target is not None:
                fields["target_sha256"] = self.artifacts.put(f"{job_id}/target", target)
            if upload is not None:
                fields["upload_sha256"] = self.artifacts.put(f"{job_id}/upload", upload)
            if model is not None and not pipe.hget(record, "model_key"):
                key = f"{job_id}/model/{text(pipe.hget(record, 'checkpoint_iteration') or b'0')}-migrated"
                fields.update(model_key=key, model_sha256=self.artifacts.put(key, model))
            rewritten = []
            for member, score in members:
                entry = json.loads(member)
                data = weights.get(str(int(score)).encode())
                if entry.get("sha256") or data is None:
                    continue
                digest = self.artifacts.put(self._weights_key(job_id, int(score), sha256(data)), data)
                rewritten.append((member, score, json.dumps({**entry, "sha256": digest}, separators=(",", ":"))))
            pipe.multi()
            if fields:
                pipe.hset(record, mapping=fields)
            for member, score, new in rewritten:
                pipe.zrem(history_key, member)
                pipe.zadd(history_key, {new: score})
            pipe.delete(*legacy.values(), weights_key)
            return True

        return self._client.transaction(move, *legacy.values(), weights_key, history_key, record,
                                        value_from_callable=True)

    def migrate_all(self) -> int:
        """Move every job stored by an earlier version (at start: backend.run, the API); how many moved."""
        moved = 0
        for raw in self._client.scan_iter(match=job_key("*", "target"), count=1000):
            moved += self.migrate(text(raw).removeprefix(keys.JOB.prefix).removesuffix(":target"))
        return moved

    def model_digests(self, job_id: str) -> set[str]:
        """The SHA-256 of every model file the job has (latest and history), as its renders' keys name them:
        from the record; a file stored before the artifact store (no digest recorded) is read and hashed."""
        found: set[str] = set()
        unhashed: list[bytes | None] = []
        if digest := self._pointers(job_id, "model_sha256")[0]:
            found.add(digest)
        else:
            unhashed.append(self.checkpoint(job_id))
        for raw in self._client.zrange(job_key(job_id, "history"), 0, -1):
            member = json.loads(raw)
            if member.get("sha256"):
                found.add(member["sha256"])
            else:
                unhashed.append(self.history_weights(job_id, member["iteration"]))
        return found | {sha256(data) for data in unhashed if data}

    def _referenced(self, job_id: str) -> set[str] | None:
        """The artifact keys a job's record points at; None when there is no such job."""
        target, upload, model, status = self._pointers(job_id, "target_sha256", "upload_sha256", "model_key",
                                                       "status")
        if status is None:
            return None
        found = {f"{job_id}/target"} if target else set()
        found |= {f"{job_id}/upload"} if upload else set()
        found |= {model} if model else set()
        for member, score in self._client.zrange(job_key(job_id, "history"), 0, -1, withscores=True):
            digest = json.loads(member).get("sha256")
            if digest:
                found.add(self._weights_key(job_id, int(score), digest))
        return found

    def elect(self, role: str, holder: str, seconds: float) -> bool:
        """Whether `holder` is (now) the one process doing `role` for the next `seconds` (SET NX with a TTL;
        the holder renews it): a periodic chore such as the orphan sweep runs on one process, not on every one."""
        key = f"{keys.ELECTED.prefix}{role}"
        if self._client.set(key, holder, nx=True, px=int(seconds * 1000)):
            return True
        if text(self._client.get(key)) == holder:
            self._client.pexpire(key, int(seconds * 1000))
            return True
        return False

    def resign(self, role: str, holder: str) -> None:
        """`holder` gives `role` up (a worker that stops), so that another process takes it at once."""
        self._run("resign", [f"{keys.ELECTED.prefix}{role}"], [holder])

    def sweep_orphans(self, grace_seconds: float = 3600.0) -> int:
        """Delete the objects no record points at (a crash between writing an object and its record, a
        job deleted while the store was down), once older than `grace_seconds` (so that a write in
        progress is never taken); how many were deleted. Run by one elected process (backend.worker)."""
        cutoff, by_job = time.time() - grace_seconds, {}
        for key, modified in self.artifacts.objects():
            if modified < cutoff and not key.startswith(f"{EXAMPLE_RENDERS}/"):  # the examples' renders: no job's
                by_job.setdefault(key.split("/", 1)[0], []).append(key)
        swept = 0
        for job_id, old in by_job.items():
            referenced = self._referenced(job_id) or set()
            live = self.model_digests(job_id) if referenced else set()
            unused = [key for key in old if key not in referenced and not _live_render(key, live)]
            self._discard(unused)
            swept += len(unused)
        return swept
