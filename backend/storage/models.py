"""Every model the stream can play: shipped examples in models/ and the jobs' checkpoints in Redis.

Model ids: `example-<file stem>` for `models/<stem>.safetensors`; a job's model id is its job id.
Wherever a model id is taken, a reference `<job id>@<iteration>` names one checkpoint of the job's
training history instead of its latest (`parse_reference`; model ids never contain "@").
The examples are read from this machine's disk, so they are listed even while Redis is down.
Each new checkpoint is announced on CHECKPOINT_CHANNEL (by the job store, backend.storage.jobs).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from backend.nca.modelfile import ModelFile, ModelFileError, ModelInfo, from_bytes, read_metadata

from .jobs import CHECKPOINT_CHANNEL, Checkpoint, Job, JobStore, is_job_id

__all__ = ["CHECKPOINT_CHANNEL", "EXAMPLE_PREFIX", "BadReference", "CheckpointNotFound", "ModelCatalog", "ModelEntry",
           "ModelNotFound", "parse_reference", "reference"]

EXAMPLE_PREFIX = "example-"
_HEADER_LIMIT = 1_000_000  # bytes of safetensors header read to list an example
# What a job's model entry is made of: reading whole records would parse every loss history.
_ENTRY_FIELDS = ("model_version", "checkpoint_iteration", "checkpoint_loss", "checkpoint_at")


class ModelNotFound(KeyError):
    """No model with this id (or the job has no checkpoint yet)."""


class CheckpointNotFound(ModelNotFound):
    """The model exists, but its history has no checkpoint at that iteration; str() says where to look."""

    def __init__(self, model_id: str, iteration: int):
        super().__init__(model_id)
        self.model_id, self.iteration = model_id, iteration

    def __str__(self) -> str:
        if not is_job_id(self.model_id):
            return f"{self.model_id[:60]!r} has no training history: only a job's checkpoints have an @iteration"
        return f"no checkpoint at iteration {self.iteration}: GET /api/jobs/{self.model_id}/checkpoints lists them"


class BadReference(ValueError):
    """A model reference that is not `<model id>` or `<job id>@<iteration>`; the message says why."""


_ITERATION = re.compile(r"[0-9]{1,10}")


def parse_reference(ref: str) -> tuple[str, int | None]:
    """`<model id>` -> (id, None); `<job id>@<iteration>` -> (id, iteration): one checkpoint of its history."""
    model_id, at, iteration = ref.partition("@")
    if not at:
        return ref, None
    if not model_id:
        raise BadReference(f"malformed model reference {ref[:60]!r}: a model id goes before the @ "
                           "(<job id>@<iteration>)")
    if not _ITERATION.fullmatch(iteration):
        raise BadReference(f"malformed model reference {ref[:60]!r}: after the @ goes a checkpoint's iteration, "
                           "a whole number (<job id>@<iteration>, e.g. @500)")
    return model_id, int(iteration)


def reference(model_id: str, iteration: int | None) -> str:
    """The reference to a model's latest checkpoint (iteration None) or to one of its history."""
    return model_id if iteration is None else f"{model_id}@{iteration}"


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


def example_file(models_dir: Path, model_id: str) -> Path:
    """The file of the shipped example `model_id` (`example-<stem>`); ModelNotFound for a stem that is not a
    plain file name."""
    stem = model_id.removeprefix(EXAMPLE_PREFIX)
    if not stem or stem.startswith(".") or any(c in stem for c in "/\\\0"):  # NUL: open() raises ValueError
        raise ModelNotFound(model_id)
    return models_dir / f"{stem}.safetensors"


class ModelCatalog:
    def __init__(self, jobs: JobStore, models_dir: str | Path):
        self.jobs, self.models_dir = jobs, Path(models_dir)

    def examples(self) -> list[ModelEntry]:
        """The shipped examples, by name (from disk only)."""
        return [entry for path in sorted(self.models_dir.glob("*.safetensors"))
                if (entry := self._example_entry(path)) is not None]

    def job_models(self, job_ids: list[str]) -> list[ModelEntry]:
        """Of `job_ids` (a page: backend.storage.listing), those with at least one checkpoint, in their order."""
        jobs = self.jobs.summaries(job_ids, _ENTRY_FIELDS)
        return [self._job_entry(job) for job in jobs if job.model_version > 0]

    def get_entry(self, model_id: str) -> ModelEntry:
        """`model_id` may be a reference `<job id>@<iteration>` (BadReference if it is malformed)."""
        model_id, iteration = parse_reference(model_id)
        if iteration is not None:
            job, checkpoint = self._history_entry(model_id, iteration)
            return self._job_entry(job).model_copy(update={
                "id": reference(model_id, iteration), "iterations": iteration, "loss": checkpoint.loss,
                "version": checkpoint.version, "updated_at": checkpoint.at})
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
        """The model file; of a reference `<job id>@<iteration>`, that checkpoint's weights-only file."""
        model_id, iteration = parse_reference(model_id)
        if iteration is not None:
            data = self.jobs.history_weights(model_id, iteration) if is_job_id(model_id) else None
            if data is None:
                self._history_entry(model_id, iteration)  # says which is missing: the job or its checkpoint
                raise CheckpointNotFound(model_id, iteration)  # thinned away just now
            return data
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

    def start_model(self, model_id: str) -> ModelFile:
        """The model a job starts from (its `start_from`: continue, fork), read whole: the one place the API
        (to check it) and the worker (to train from it) load it. ModelNotFound, CheckpointNotFound, BadReference;
        a file that does not read is ModelNotFound too (nothing to start from)."""
        try:
            return from_bytes(self.get_model_bytes(model_id))
        except ModelFileError:
            raise ModelNotFound(model_id) from None

    def get_model_version(self, model_id: str) -> int:
        """Of a reference `<job id>@<iteration>`: the job's version when that checkpoint was written (fixed)."""
        model_id, iteration = parse_reference(model_id)
        if iteration is not None:
            return self._history_entry(model_id, iteration)[1].version
        if model_id.startswith(EXAMPLE_PREFIX):
            try:
                return self._example_path(model_id).stat().st_mtime_ns // 1_000_000
            except OSError:
                raise ModelNotFound(model_id) from None
        version = self.jobs.model_version(model_id) if is_job_id(model_id) else 0
        if version == 0:
            raise ModelNotFound(model_id)
        return version

    def _history_entry(self, job_id: str, iteration: int) -> tuple[Job, Checkpoint]:
        """The job (ModelNotFound if there is none) and its checkpoint at `iteration` (CheckpointNotFound)."""
        jobs = self.jobs.summaries([job_id], _ENTRY_FIELDS) if is_job_id(job_id) else []
        if not jobs:
            if job_id.startswith(EXAMPLE_PREFIX):
                raise CheckpointNotFound(job_id, iteration)
            raise ModelNotFound(job_id)
        checkpoint = self.jobs.history_entry(job_id, iteration)
        if checkpoint is None:
            raise CheckpointNotFound(job_id, iteration)
        return jobs[0], checkpoint

    def get_stored_card(self, model_id: str) -> bytes | None:
        """The model card stored next to a shipped example (`models/<stem>.card.json`), if there is one."""
        if not model_id.startswith(EXAMPLE_PREFIX):
            return None
        try:
            return self._example_path(model_id).with_suffix(".card.json").read_bytes()
        except (OSError, ModelNotFound):
            return None

    def _example_path(self, model_id: str) -> Path:
        return example_file(self.models_dir, model_id)

    def _example_entry(self, path: Path) -> ModelEntry | None:
        """Read only the header; a broken file is left out of the list rather than failing it, and so is
        a file whose stem has an "@" (its id would read as a reference to a checkpoint)."""
        if "@" in path.stem:
            return None
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

