"""The training task: claim the job, train with the NCA core, write progress and checkpoints to Redis.

A job is resumed from its latest checkpoint whenever it runs again (after a worker was killed or
shut down): the model file holds the weights, the optimizer state and the iteration count.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from functools import lru_cache

import torch

from backend.config import Settings, get_settings
from backend.nca import TrainConfig, Trainer, TrainingFailed
from backend.nca.model import pick_device
from backend.nca.modelfile import ModelFile, from_bytes, to_bytes, write_atomic
from backend.nca.train import Progress
from backend.storage.connection import REDIS_DOWN_ERRORS, connect, text
from backend.storage.jobs import Job, JobStore, LossHistory, job_key
from backend.storage.models import publish_checkpoint

from .celery_app import TRAIN_TASK, app

log = logging.getLogger(__name__)

WORKER_ID = f"{socket.gethostname()}-{os.getpid()}"
SHUTDOWN = threading.Event()  # set when the worker is asked to stop: the job checkpoints and goes back to the queue
current_job: str | None = None  # shown in the worker's presence key
MAX_WORKERS_LOST = 20  # a job whose worker keeps dying (e.g. killed for memory) fails instead of looping


@lru_cache
def job_store() -> JobStore:
    return JobStore(connect(get_settings().redis_url))


class Lease(threading.Thread):
    """Renews the job's lease in the background; `lost` is set if another worker took the job over."""

    def __init__(self, store: JobStore, job_id: str, token: str, seconds: float):
        super().__init__(name=f"lease-{job_id[:8]}", daemon=True)
        self.store, self.job_id, self.token, self.seconds = store, job_id, token, seconds
        self.lost, self._done = threading.Event(), threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.seconds / 3):
            try:
                if not self.store.refresh_lease(self.job_id, self.token, self.seconds):
                    log.warning("job %s: lease lost, another worker owns it now", self.job_id)
                    self.lost.set()
                    return
            except Exception:  # Redis briefly unreachable: try again next beat
                log.warning("job %s: could not renew the lease", self.job_id, exc_info=True)

    def __enter__(self) -> Lease:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join()


@app.task(name=TRAIN_TASK)
def train_job(job_id: str) -> dict:
    """Train one job; a message for a job that is finished or running elsewhere is dropped."""
    global current_job
    settings, store = get_settings(), job_store()
    device = pick_device(settings.device)
    token = f"{WORKER_ID}-{uuid.uuid4().hex[:8]}"
    outcome = store.claim(job_id, token, settings.lease_seconds, str(device), WORKER_ID)
    if outcome != "ok":
        log.info("job %s: skipped (%s)", job_id, outcome)
        return {"job_id": job_id, "skipped": outcome}
    current_job = job_id
    try:
        with Lease(store, job_id, token, settings.lease_seconds) as lease:
            status = JobRun(store, store.get(job_id), token, device, settings, lease).run()
    finally:
        current_job = None
    log.info("job %s: %s", job_id, status)
    return {"job_id": job_id, "status": status}


class JobRun:
    """One run of a job on this worker: from its latest checkpoint (if any) to the end, a cancel or a shutdown."""

    def __init__(self, store: JobStore, job: Job, token: str, device: torch.device, settings: Settings,
                 lease: Lease):
        self.store, self.job, self.token, self.device, self.settings, self.lease = \
            store, job, token, device, settings, lease
        every = int(text(store.client.hget(job_key(job.id), "loss_every")) or 1)
        self.history = LossHistory(job.loss_history, every)
        self.last_write = 0.0
        self.last_checkpoint: bytes | None = None  # what Redis holds: exported as is on success

    def run(self) -> str:
        job, store = self.job, self.store
        if job.workers_lost >= MAX_WORKERS_LOST:  # shutdowns (deploys, Ctrl-C) do not count: they checkpoint
            return self.finish("failed", f"gave up: the worker training it was lost {job.workers_lost} times "
                                         "(out of memory?); try a smaller target or pool")
        options = job.options
        try:
            config = TrainConfig.from_dict({**options, "checkpoint_every": options.get("checkpoint_every")
                                            or self.settings.checkpoint_every})
            resume_bytes = store.checkpoint(job.id)
            resume = from_bytes(resume_bytes) if resume_bytes else None
            resumed_from = job.resumed_from
            if resume is not None:
                self.history.truncate(resume.info.iterations)
                resumed_from = [*resumed_from, resume.info.iterations]
                log.info("job %s: resuming from the checkpoint at iteration %d", job.id, resume.info.iterations)
            trainer = Trainer(store.target(job.id), config, self.device, resume=resume, name=job.name,
                              target_size=options.get("target_size"), padding=options.get("padding"))
            store.update(job.id, iteration=trainer.iteration, resumed_from=resumed_from,
                         loss_history=self.history.points, loss_every=self.history.every, error=None)
            result = trainer.run(self.on_progress, self.should_stop, self.on_checkpoint)
        except TrainingFailed as exc:
            return self.finish("failed", str(exc))
        except REDIS_DOWN_ERRORS:
            raise  # not the job's fault: its lease runs out and it resumes from its checkpoint once Redis is back
        except Exception as exc:
            log.exception("job %s: training crashed", job.id)
            return self.finish("failed", f"internal error while training: {type(exc).__name__}: {exc}")
        if self.lease.lost.is_set():
            return "lease lost"
        self.write_progress(result.iteration, result.loss, None, force=True)
        if result.status == "succeeded":
            self.export()
            return self.finish("succeeded")
        if store.cancel_requested(job.id):
            return self.finish("cancelled")
        store.suspend(job.id, self.token)  # worker shutdown: recovery sends it again, it resumes from here
        return "suspended"

    def should_stop(self) -> bool:
        if SHUTDOWN.is_set() or self.lease.lost.is_set():
            return True
        try:
            return self.store.cancel_requested(self.job.id)
        except REDIS_DOWN_ERRORS:  # a blip: keep training, ask again next iteration
            return False

    def on_progress(self, p: Progress) -> None:
        self.history.add(p.iteration, p.loss)
        self.write_progress(p.iteration, p.loss, p.iterations_per_second)

    def write_progress(self, iteration: int, loss: float, rate: float | None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < self.settings.progress_every:
            return
        self.last_write = now
        eta = (self.job.total - iteration) / rate if rate else None
        fields = dict(iteration=iteration, loss_history=self.history.points, loss_every=self.history.every)
        if not math.isnan(loss):  # NaN: no iteration in this run yet (resumed at its last checkpoint)
            fields["loss"] = loss
        if rate is not None:
            fields.update(iterations_per_second=round(rate, 3), eta_seconds=round(eta, 1))
        try:
            self.store.update(self.job.id, **fields)
        except REDIS_DOWN_ERRORS:  # progress is best effort; checkpoints are not
            log.warning("job %s: could not write progress", self.job.id)

    def on_checkpoint(self, model_file: ModelFile) -> None:
        iteration, loss = model_file.info.iterations, model_file.info.final_loss
        data = to_bytes(model_file)
        version = self.store.store_checkpoint(self.job.id, self.token, data, iteration, loss)
        if version < 0:
            self.lease.lost.set()
            return
        self.last_checkpoint = data
        publish_checkpoint(self.store.client, self.job.id, version, iteration, "running")

    def export(self) -> None:
        """A copy of the final checkpoint in models_dir/jobs/ for this machine; Redis stays the source of truth."""
        data = self.last_checkpoint or self.store.checkpoint(self.job.id)
        path = self.settings.models_dir / "jobs" / f"{self.job.id}.safetensors"
        try:
            write_atomic(path, data)
        except OSError as exc:  # disk full, read-only or unwritable folder: the job itself is fine
            log.warning("job %s: could not export the model to %s: %s", self.job.id, path, exc)
            warning = (f"the model could not be saved to {path} on worker {WORKER_ID} ({exc.strerror or exc}); "
                       f"it is safe in Redis and served as usual at /api/models/{self.job.id}/file")
            try:
                self.store.update(self.job.id, warning=warning)
            except REDIS_DOWN_ERRORS:
                log.warning("job %s: could not record the export warning", self.job.id)

    def finish(self, status: str, error: str | None = None) -> str:
        if self.store.finish(self.job.id, self.token, status, error):
            job = self.store.get(self.job.id)
            if job.model_version:
                publish_checkpoint(self.store.client, job.id, job.model_version, job.checkpoint_iteration or 0, status)
        return status
