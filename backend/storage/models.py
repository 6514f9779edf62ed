"""Every model the stream can play: shipped examples in models/ and the jobs' checkpoints in Redis.

Model ids: `example-<file stem>` for `models/<stem>.safetensors`; a job's model id is its job id.
After a checkpoint is stored the worker publishes on `nca:checkpoints` (see `publish_checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import redis
from pydantic import BaseModel

from backend.nca.modelfile import ModelFileError, read_metadata

from .connection import text
from .jobs import JOBS_KEY, Job, is_job_id, job_key

CHECKPOINT_CHANNEL = "nca:checkpoints"
EXAMPLE_PREFIX = "example-"
_HEADER_LIMIT = 1_000_000  # bytes of safetensors header read to list an example
# What a job's model entry is made of (plus what Job requires): reading whole records would parse every loss history.
_ENTRY_FIELDS = ("id", "name", "status", "total", "created_at", "options", "grid_height", "grid_width",
                 "model_version", "checkpoint_iteration", "checkpoint_loss", "checkpoint_at")


class ModelNotFound(KeyError):
    """No model with this id (or the job has no checkpoint yet)."""


class ModelEntry(BaseModel):
    id: str
    name: str
    source: Literal["example", "job"]
    status: str  # "ready" for examples, else the job status
    experiment: str | None = None
    grid_height: int
    grid_width: int
    iterations: int  # training iterations in this model file
    loss: float | None = None
    version: int  # increases with each checkpoint (examples: file modification time in ms)
    updated_at: float  # unix seconds


def publish_checkpoint(client: redis.Redis, model_id: str, version: int, iteration: int, status: str) -> None:
    """Tell stream services that `model_id` has a new checkpoint (or a new status)."""
    message = {"model_id": model_id, "version": version, "iteration": iteration, "status": status}
    client.publish(CHECKPOINT_CHANNEL, json.dumps(message))


class ModelCatalog:
    def __init__(self, redis_client: redis.Redis, models_dir: str | Path):
        self.client, self.models_dir = redis_client, Path(models_dir)

    def list_models(self) -> list[ModelEntry]:
        """Examples (by name), then jobs with at least one checkpoint, newest first."""
        entries = [entry for path in sorted(self.models_dir.glob("*.safetensors"))
                   if (entry := self._example_entry(path)) is not None]
        jobs = self._jobs([text(j) for j in self.client.zrevrange(JOBS_KEY, 0, -1)])
        return entries + [self._job_entry(job) for job in jobs if job.model_version > 0]

    def get_entry(self, model_id: str) -> ModelEntry:
        if model_id.startswith(EXAMPLE_PREFIX):
            entry = self._example_entry(self._example_path(model_id))
            if entry is None:
                raise ModelNotFound(model_id)
            return entry
        jobs = self._jobs([model_id]) if is_job_id(model_id) else []
        if not jobs or jobs[0].model_version == 0:
            raise ModelNotFound(model_id)
        return self._job_entry(jobs[0])

    def _jobs(self, job_ids: list[str]) -> list[Job]:
        """The records of the jobs that exist, with only the fields a model entry needs (no loss history)."""
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(job_key(job_id), _ENTRY_FIELDS)
            rows = pipe.execute()
        records = ({name: value for name, value in zip(_ENTRY_FIELDS, row, strict=True) if value is not None}
                   for row in rows)
        return [Job.from_hash(record) for record in records if record]

    def get_model_bytes(self, model_id: str) -> bytes:
        if model_id.startswith(EXAMPLE_PREFIX):
            path = self._example_path(model_id)
            try:
                return path.read_bytes()
            except OSError:
                raise ModelNotFound(model_id) from None
        data = self.client.get(job_key(model_id, "model")) if is_job_id(model_id) else None
        if data is None:
            raise ModelNotFound(model_id)
        return data

    def get_model_version(self, model_id: str) -> int:
        if model_id.startswith(EXAMPLE_PREFIX):
            try:
                return self._example_path(model_id).stat().st_mtime_ns // 1_000_000
            except OSError:
                raise ModelNotFound(model_id) from None
        version = self.client.hget(job_key(model_id), "model_version") if is_job_id(model_id) else None
        if version is None or int(version) == 0:
            raise ModelNotFound(model_id)
        return int(version)

    def get_stored_card(self, model_id: str) -> bytes | None:
        """The model card stored next to a shipped example (`models/<stem>.card.json`), if there is one."""
        if not model_id.startswith(EXAMPLE_PREFIX):
            return None
        try:
            return self._example_path(model_id).with_suffix(".card.json").read_bytes()
        except (OSError, ModelNotFound):
            return None

    def _example_path(self, model_id: str) -> Path:
        stem = model_id.removeprefix(EXAMPLE_PREFIX)
        if not stem or stem.startswith(".") or any(c in stem for c in "/\\\0"):  # NUL: open() raises ValueError
            raise ModelNotFound(model_id)
        return self.models_dir / f"{stem}.safetensors"

    def _example_entry(self, path: Path) -> ModelEntry | None:
        """Read only the header; a broken file is left out of the list rather than failing it."""
        try:
            with path.open("rb") as f:
                head = f.read(8)
                header_len = int.from_bytes(head, "little") if len(head) == 8 else 0
                info = json.loads(read_metadata(head + f.read(min(header_len, _HEADER_LIMIT)))["info"])
            stat = path.stat()
        except (OSError, ModelFileError, KeyError, ValueError):
            return None
        return ModelEntry(
            id=EXAMPLE_PREFIX + path.stem, name=info.get("name") or path.stem, source="example", status="ready",
            experiment=info.get("experiment"), grid_height=int(info.get("grid_height", 72)),
            grid_width=int(info.get("grid_width", 72)), iterations=int(info.get("iterations", 0)),
            loss=info.get("final_loss"), version=stat.st_mtime_ns // 1_000_000, updated_at=stat.st_mtime,
        )

    @staticmethod
    def _job_entry(job: Job) -> ModelEntry:
        return ModelEntry(
            id=job.id, name=job.name, source="job", status=job.status, experiment=job.options.get("experiment"),
            grid_height=job.grid_height, grid_width=job.grid_width, iterations=job.checkpoint_iteration or 0,
            loss=job.checkpoint_loss, version=job.model_version,
            updated_at=job.checkpoint_at or job.created_at,
        )

