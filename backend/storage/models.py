"""Every model the stream can play: shipped examples in models/ and the jobs' checkpoints in Redis.

Model ids: `example-<file stem>` for `models/<stem>.safetensors`; a job's model id is its job id.
The examples are read from this machine's disk, so they are listed even while Redis is down.
Each new checkpoint is announced on CHECKPOINT_CHANNEL (by the job store, backend.storage.jobs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from backend.nca.modelfile import ModelFileError, ModelInfo, read_metadata

from .jobs import CHECKPOINT_CHANNEL, Job, JobStore, is_job_id

__all__ = ["CHECKPOINT_CHANNEL", "EXAMPLE_PREFIX", "ModelCatalog", "ModelEntry", "ModelNotFound"]

EXAMPLE_PREFIX = "example-"
_HEADER_LIMIT = 1_000_000  # bytes of safetensors header read to list an example
# What a job's model entry is made of: reading whole records would parse every loss history.
_ENTRY_FIELDS = ("model_version", "checkpoint_iteration", "checkpoint_loss", "checkpoint_at")


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


class ModelCatalog:
    def __init__(self, jobs: JobStore, models_dir: str | Path):
        self.jobs, self.models_dir = jobs, Path(models_dir)

    def list_models(self) -> list[ModelEntry]:
        """Examples (by name), then jobs with at least one checkpoint, newest first."""
        return self.examples() + self.job_models()

    def examples(self) -> list[ModelEntry]:
        """The shipped examples, by name (from disk only)."""
        return [entry for path in sorted(self.models_dir.glob("*.safetensors"))
                if (entry := self._example_entry(path)) is not None]

    def job_models(self) -> list[ModelEntry]:
        """Jobs with at least one checkpoint, newest first (from Redis)."""
        jobs = self.jobs.summaries(self.jobs.ids(), _ENTRY_FIELDS)
        return [self._job_entry(job) for job in jobs if job.model_version > 0]

    def get_entry(self, model_id: str) -> ModelEntry:
        if model_id.startswith(EXAMPLE_PREFIX):
            entry = self._example_entry(self._example_path(model_id))
            if entry is None:
                raise ModelNotFound(model_id)
            return entry
        jobs = self.jobs.summaries([model_id], _ENTRY_FIELDS) if is_job_id(model_id) else []
        if not jobs or jobs[0].model_version == 0:
            raise ModelNotFound(model_id)
        return self._job_entry(jobs[0])

    def get_model_bytes(self, model_id: str) -> bytes:
        if model_id.startswith(EXAMPLE_PREFIX):
            path = self._example_path(model_id)
            try:
                return path.read_bytes()
            except OSError:
                raise ModelNotFound(model_id) from None
        data = self.jobs.checkpoint(model_id) if is_job_id(model_id) else None
        if data is None:
            raise ModelNotFound(model_id)
        return data

    def get_model_version(self, model_id: str) -> int:
        if model_id.startswith(EXAMPLE_PREFIX):
            try:
                return self._example_path(model_id).stat().st_mtime_ns // 1_000_000
            except OSError:
                raise ModelNotFound(model_id) from None
        version = self.jobs.model_version(model_id) if is_job_id(model_id) else 0
        if version == 0:
            raise ModelNotFound(model_id)
        return version

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
                raw = json.loads(read_metadata(head + f.read(min(header_len, _HEADER_LIMIT)))["info"])
            info = ModelInfo.from_dict(raw)
            stat = path.stat()
        except (OSError, ModelFileError, KeyError, ValueError, TypeError):
            return None
        return ModelEntry(
            id=EXAMPLE_PREFIX + path.stem, name=info.name or path.stem, source="example", status="ready",
            experiment=info.experiment, grid_height=int(info.grid_height), grid_width=int(info.grid_width),
            iterations=int(info.iterations), loss=info.final_loss, version=stat.st_mtime_ns // 1_000_000,
            updated_at=stat.st_mtime,
        )

    @staticmethod
    def _job_entry(job: Job) -> ModelEntry:
        return ModelEntry(
            id=job.id, name=job.name, source="job", status=job.status, experiment=job.spec.train.experiment,
            grid_height=job.grid_height, grid_width=job.grid_width, iterations=job.checkpoint_iteration or 0,
            loss=job.checkpoint_loss, version=job.model_version,
            updated_at=job.checkpoint_at or job.created_at,
        )
