"""Previews of the jobs' checkpoints (the latest and those of the history), grown once per model version
(a polling client repeats nothing)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from backend.nca.modelfile import from_bytes
from backend.nca.render import grown_frame, png_bytes
from backend.storage.jobs import Job

PREVIEW_SEED = 0  # the preview is the same picture for the same checkpoint


class Previews:
    """The last frame of a job's checkpoint grown from the seed, by (job id, model version): the version a
    checkpoint was written at names it, whether it is the latest or one of the history."""

    def __init__(self, size: int = 256):
        self.size = size  # frames kept (a 72 x 72 one is 15 KB)
        self._frames: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # routes run in a thread pool

    def png(self, job: Job, model_bytes: bytes, scale: int, version: int | None = None) -> bytes:
        """Grown for `max_steps` CA steps, as long as in training; each cell `scale` pixels wide.
        `version`: the checkpoint's (default: the job's latest)."""
        return png_bytes(self._frame(job, model_bytes, job.model_version if version is None else version), scale)

    def forget(self, job_id: str) -> None:
        """Drop the job's frames (it was deleted)."""
        with self._lock:
            for key in [k for k in self._frames if k[0] == job_id]:
                del self._frames[key]

    def _frame(self, job: Job, model_bytes: bytes, version: int) -> np.ndarray:
        key = (job.id, version)
        with self._lock:
            if key in self._frames:
                self._frames.move_to_end(key)
                return self._frames[key]
        frame = grown_frame(from_bytes(model_bytes).model, job.grid_height, job.grid_width, job.spec.train.max_steps,
                            seed=PREVIEW_SEED)
        with self._lock:
            self._frames[key] = frame
            while len(self._frames) > self.size:
                self._frames.popitem(last=False)
        return frame
