"""A job that gets checkpoints the way a worker gives them, without training: for hot-swap tests.

Real Redis, the real JobStore and its real `nca:checkpoints` announcements; only the model files
are chosen by the test (a shipped example, a random-weight model) instead of trained.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import torch

from backend.nca import JobSpec, modelfile
from backend.nca.modelfile import ModelFile
from backend.storage.connection import connect
from backend.storage.jobs import CHECKPOINT_CHANNEL, JobStore
from backend.storage.owners import Owners
from tests.helpers import REPO_ROOT

HEART = REPO_ROOT / "models" / "heart.safetensors"  # shipped, 36 x 36, regenerating: grows in ~60 steps


def as_checkpoint(path: Path, iteration: int, loss: float) -> ModelFile:
    """A model file as if written at `iteration` of a job (same weights, that iteration and loss)."""
    mf = modelfile.load(path)
    return ModelFile(mf.model, dataclasses.replace(mf.info, iterations=iteration, final_loss=loss))


def publish(client, model_id: str, version: int, iteration: int, status: str) -> None:
    """An announcement by hand, as none of the store's transitions would make it (repeated, stale, garbled)."""
    message = {"model_id": model_id, "version": version, "iteration": iteration, "status": status}
    client.publish(CHECKPOINT_CHANNEL, json.dumps(message))


class TrainingJob:
    """A claimed job in Redis; `checkpoint` and `finish` are the worker's transitions (the store announces them)."""

    def __init__(self, redis_url: str, name: str = "hot swap", height: int = 36, width: int = 36,
                 experiment: str = "regenerating", total: int = 1000, owner_token: str | None = None) -> None:
        """`owner_token`: whose job it is (a page's owner lists it); none: a job from before owners existed."""
        self.client = connect(redis_url)
        self.store = JobStore(self.client)
        self.id, self.token = uuid.uuid4().hex, "lease-token"
        if owner_token:
            Owners(self.client).claim(self.id, owner_token.split(".")[0])
        spec = JobSpec.from_options({"name": name, "experiment": experiment, "iterations": total})
        self.store.create(self.id, spec, torch.zeros(4, height, width))
        assert self.store.claim(self.id, self.token, 600, "cpu", "test") == "ok"

    def checkpoint(self, model_file: ModelFile) -> int:
        """Store the model file (version += 1), announced as "running"; the new version."""
        data = modelfile.to_bytes(model_file)
        version = self.store.store_checkpoint(self.id, self.token, data, model_file.info.iterations,
                                              model_file.info.final_loss)
        assert version > 0, "the lease was lost"
        return version

    def finish(self, status: str = "succeeded") -> None:
        """Finish the job, announced with its status and its last checkpoint (no new version)."""
        assert self.store.finish(self.id, self.token, status)

    def close(self) -> None:
        self.client.close()
