"""A job that gets checkpoints the way a worker gives them, without training: for hot-swap tests.

Real Redis, the real JobStore and the real `nca:checkpoints` announcement; only the model files
are chosen by the test (a shipped example, a random-weight model) instead of trained.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import torch

from backend.nca import modelfile
from backend.nca.modelfile import ModelFile
from backend.storage.connection import connect
from backend.storage.jobs import JobStore
from backend.storage.models import publish_checkpoint
from tests.helpers import REPO_ROOT

HEART = REPO_ROOT / "models" / "heart.safetensors"  # shipped, 36 x 36, regenerating: grows in ~60 steps


def as_checkpoint(path: Path, iteration: int, loss: float) -> ModelFile:
    """A model file as if written at `iteration` of a job (same weights, that iteration and loss)."""
    mf = modelfile.load(path)
    return ModelFile(mf.model, dataclasses.replace(mf.info, iterations=iteration, final_loss=loss))


class TrainingJob:
    """A claimed job in Redis; `checkpoint` and `finish` store and announce as the worker does."""

    def __init__(self, redis_url: str, name: str = "hot swap", height: int = 36, width: int = 36,
                 experiment: str = "regenerating", total: int = 1000) -> None:
        self.client = connect(redis_url)
        self.store = JobStore(self.client)
        self.id, self.token = uuid.uuid4().hex, "lease-token"
        self.store.create(self.id, name, {"experiment": experiment}, total, torch.zeros(4, height, width))
        assert self.store.claim(self.id, self.token, 600, "cpu", "test") == "ok"

    def checkpoint(self, model_file: ModelFile) -> int:
        """Store the model file (version += 1), then announce it as "running"; the new version."""
        data = modelfile.to_bytes(model_file)
        version = self.store.store_checkpoint(self.id, self.token, data, model_file.info.iterations,
                                              model_file.info.final_loss)
        assert version > 0, "the lease was lost"
        publish_checkpoint(self.client, self.id, version, model_file.info.iterations, "running")
        return version

    def finish(self, status: str = "succeeded") -> None:
        """Finish the job and announce its status with its last checkpoint (no new version)."""
        assert self.store.finish(self.id, self.token, status)
        job = self.store.get(self.id)
        publish_checkpoint(self.client, self.id, job.model_version, job.checkpoint_iteration or 0, status)

    def close(self) -> None:
        self.client.close()
