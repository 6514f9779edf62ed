"""The training task: claim the job, train its spec with the NCA core, write progress and checkpoints.

A job is resumed from its latest checkpoint whenever it runs again (after a worker was killed or
shut down): the model file holds the weights, the optimizer state and the iteration count.
Everything this worker process knows about itself (its id, whether it is stopping, the job it
trains) lives in one `TrainingWorker`, made with the Celery app (backend/worker/celery_app.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import torch
from celery import Celery
from redis.exceptions import OutOfMemoryError

from backend.config import Settings
from backend.nca import Trainer, TrainingFailed
from backend.nca.budget import GUESSED_SPEED, Speed
from backend.nca.jobspec import SpecError
from backend.nca.model import pick_device
from backend.nca.modelfile import ModelFile, from_bytes, to_bytes, write_atomic
from backend.nca.train import Progress, TrainResult
from backend.storage.artifacts import ArtifactUnavailable
from backend.storage.connection import REDIS_DOWN_ERRORS
from backend.storage.jobs import Job, JobStatus, JobStore
from backend.storage.shared import Storage
from backend.worker.cpus import pick_threads
from backend.worker.losses import LossHistory

log = logging.getLogger(__name__)

MAX_WORKERS_LOST = 20  # a job whose worker keeps dying (e.g. killed for memory) fails instead of looping
REDIS_RETRY_SECONDS = 1.0  # while Redis is down at the start or end of a run
T = TypeVar("T")
INTERRUPTIONS = {"stop": "after a stop", "worker_lost": "after its worker was lost"}  # Job.interrupted_by, in words


_RECOVERING = threading.Lock()  # the heartbeat and a task about to take a turn recover one at a time


def recover_orphans(storage: Storage, skip: str | None = None) -> list[str]:
    """Re-queue the jobs whose worker is gone and send their messages again; `skip`: this worker's own job
    (it is alive: its lease comes back with its next renewal). One call at a time in this process, so that a
    task taking its turn sees a recovered job at the front of the fair queue (backend/storage/dispatch.py)."""
    with _RECOVERING:
        return _recover(storage, skip)


def requeued_words(job: Job) -> str:
    """The re-queue log line: where the job resumes from, and why it was interrupted."""
    why = INTERRUPTIONS.get(job.interrupted_by, "")
    if job.checkpoint_iteration is None:
        return f"re-queued {why}; it has no checkpoint yet and starts again from the beginning".replace("  ", " ")
    return f"re-queued {why} to resume from its checkpoint at iteration {job.checkpoint_iteration}".replace("  ", " ")


def _recover(storage: Storage, skip: str | None) -> list[str]:
    jobs, queue = storage.jobs, storage.queue
    recovered = jobs.recover_orphans(skip)
    for i, job_id in enumerate(recovered):
        try:
            forgotten = queue.forget_deliveries(job_id)  # the lost worker's message, never to be acknowledged
            storage.fair.resume(job_id)  # ahead of every job that has not started (backend/storage/dispatch.py)
            queue.send(job_id)
        except Exception:
            jobs.mark_orphan(*recovered[i:])  # this one and the rest, not sent yet: try again next round
            raise
        log.info("job %s: %s (unacknowledged messages dropped: %d)", job_id, requeued_words(jobs.get(job_id)),
                 forgotten)
    return recovered


class TrainingWorker:
    """This worker process: its id, the job it trains, whether it is stopping, and where it stores."""

    def __init__(self, settings: Settings, celery: Celery):
        self.settings = settings
        self.id = f"{socket.gethostname()}-{os.getpid()}"
        self.device = pick_device(settings.device)
        self.stopping = threading.Event()  # asked to stop: the job checkpoints and goes back to the queue
        self.current_job: str | None = None  # shown in the worker's presence key
        # What this device does (backend.nca.budget): measured when the worker is ready (lifecycle.py),
        # refined by every job it trains; published with its presence for the API's estimates.
        self.speed: Speed = replace(GUESSED_SPEED, device=str(self.device))
        self.storage = Storage.connect(settings, celery)  # the app resends recovered jobs

    def train(self, message_job: str) -> dict:
        """Train the job whose turn it is (a message is a turn: backend/storage/dispatch.py); one that is finished
        or running elsewhere is dropped."""
        store, lease_seconds = self.storage.jobs, self.settings.lease_seconds
        try:  # a job whose worker was lost goes first: find it now, not at the next heartbeat
            recover_orphans(self.storage)
        except Exception:  # Redis down or the resend failed: the heartbeat tries again
            log.warning("could not look for lost workers' jobs before taking one", exc_info=True)
        job_id = until_redis(lambda: self.storage.fair.take(message_job, time.time()), self.stopping,
                             f"job {message_job}: dispatch")
        if job_id != message_job:
            log.info("job %s: its turn (fair dispatch; the message was job %s's)", job_id, message_job)
        token = f"{self.id}-{uuid.uuid4().hex[:8]}"
        outcome = until_redis(lambda: store.claim(job_id, token, lease_seconds, str(self.device), self.id),
                              self.stopping, f"job {job_id}: claim")
        if outcome != "ok":
            log.info("job %s: skipped (%s)", job_id, outcome)
            return {"job_id": job_id, "skipped": outcome}
        self.current_job = job_id
        if self.device.type == "cpu":  # the cores free now (backend/worker/cpus.py): contention costs up to 7x
            torch.set_num_threads(pick_threads(self.settings.torch_threads))
        try:
            with Lease(store, job_id, token, lease_seconds) as lease:
                try:
                    job = until_redis(lambda: store.get(job_id), self.stopping, f"job {job_id}: read")
                except ValueError as exc:  # a spec this worker cannot read (say, written by a newer version)
                    lease.release()
                    store.finish(job_id, token, "failed", f"this worker cannot read the job's options: {exc}")
                    return {"job_id": job_id, "status": "failed"}
                run = JobRun(store, job, token, self.device, self.settings, lease, stopping=self.stopping,
                             worker_id=self.id, speed=self.speed, start_model=self.storage.catalog.start_model)
                status = run.run()
                self.speed = run.speed  # refined by what the run measured
        finally:
            self.current_job = None
        log.info("job %s: %s", job_id, status)
        return {"job_id": job_id, "status": status}


def until_redis(action: Callable[[], T], stopping: threading.Event, what: str) -> T:
    """`action()`, again every second while Redis is unreachable, unless the worker is stopping.

    The start and end of a run wait for Redis rather than give up: a job that gave up would look
    like one whose worker was lost once its lease ran out.
    """
    while True:
        try:
            return action()
        except REDIS_DOWN_ERRORS:
            if stopping.is_set():
                raise
            log.warning("%s: Redis is unreachable; trying again in %.0f s", what, REDIS_RETRY_SECONDS)
            stopping.wait(REDIS_RETRY_SECONDS)


STORAGE_FULL = ("storage is full: Redis refused the job's writes for memory (maxmemory); its latest stored "
                "checkpoint is kept. Ask the operator to free or add memory, then train it again")


class StorageFull(Exception):
    """Redis refused a write of this run for memory: the run ends, the job fails with STORAGE_FULL."""


class Outage:
    """What a training run does while Redis (or the artifact store) is unreachable: it keeps training,
    asks again only after a growing pause (each failed call costs a client retry, ~100 ms: asking every
    iteration made training crawl), and logs one line when the outage starts and one when it ends,
    with how many calls failed in between (not one per call)."""

    FIRST_PAUSE, MAX_PAUSE = 0.25, 5.0

    def __init__(self, job_id: str):
        self.job_id, self.since, self.failures, self.pause, self.next_try = job_id, None, 0, 0.0, 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def due(self) -> bool:
        """Whether to call the store now: always when it is up, after the pause while it is down."""
        return self.since is None or time.monotonic() >= self.next_try

    def failed(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since, self.pause = now, self.FIRST_PAUSE
            log.warning("job %s: storage unreachable (%s: %s); training goes on, checkpoints are kept until it "
                        "is back", self.job_id, what, exc)
        else:
            self.pause = min(self.pause * 2, self.MAX_PAUSE)
        self.failures += 1
        self.next_try = now + self.pause

    def succeeded(self) -> None:
        if self.since is not None:
            log.warning("job %s: storage reachable again after %.1f s (%d calls failed meanwhile)", self.job_id,
                        time.monotonic() - self.since, self.failures)
            self.since, self.failures = None, 0


STORE_DOWN_ERRORS = (*REDIS_DOWN_ERRORS, ArtifactUnavailable)


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
                    if self._done.is_set():  # the run ended the job (finish, suspend) during this renewal
                        return
                    log.warning("job %s: lease lost, another worker owns it now", self.job_id)
                    self.lost.set()
                    return
            except REDIS_DOWN_ERRORS:  # the lease is taken back when Redis is back, if nobody took the job
                log.warning("job %s: could not renew the lease (Redis unreachable)", self.job_id)

    def release(self) -> None:
        """No more renewals: the run is ending the job itself (its end step deletes the lease)."""
        self._done.set()

    def __enter__(self) -> Lease:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join()


class JobRun:
    """One run of a job on this worker: from its latest checkpoint (if any) to the end, a cancel or a shutdown."""

    def __init__(self, store: JobStore, job: Job, token: str, device: torch.device, settings: Settings,
                 lease: Lease, stopping: threading.Event | None = None, worker_id: str = "this worker",
                 speed: Speed = GUESSED_SPEED, start_model: Callable[[str], ModelFile] | None = None):
        """`start_model` reads the model a job's `start_from` names (ModelCatalog.start_model)."""
        self.store, self.job, self.token, self.device, self.settings, self.lease = \
            store, job, token, device, settings, lease
        self.start_model = start_model
        self.stopping, self.worker_id, self.speed = stopping or threading.Event(), worker_id, speed
        self.history = LossHistory(job.loss_history, job.loss_every)
        self.last_write = 0.0
        self.last_checkpoint: bytes | None = None  # what the store holds: exported as is on success
        # Checkpoints the store was down for, oldest first, as (model file, weights, iteration, loss): each is
        # stored, in order, when it is back, so the history keeps them; only the latest keeps its optimizer state.
        self.unsaved: list[tuple[bytes | None, bytes, int, float | None]] = []
        self.outage = Outage(job.id)

    def run(self) -> str:
        job = self.job
        if job.workers_lost >= MAX_WORKERS_LOST:  # shutdowns (deploys, Ctrl-C) do not count: they checkpoint
            return self.finish("failed", f"gave up: the worker training it was lost {job.workers_lost} times "
                                         "(out of memory?); try a smaller target or pool")
        try:
            trainer = until_redis(self.prepare, self.stopping, f"job {job.id}: start")
            start = time.perf_counter()
            result = trainer.run(self.on_progress, self.should_stop, self.on_checkpoint)
            predicted = self.speed.seconds(trainer.steps, trainer.sample_steps, trainer.live_cells())
            self.speed = self.speed.refined(time.perf_counter() - start, predicted)
        except TrainingFailed as exc:
            return self.finish("failed", str(exc))
        except (StorageFull, OutOfMemoryError):
            log.warning("job %s: Redis is full (maxmemory): the job ends failed", job.id)
            return until_redis(lambda: self.finish("failed", STORAGE_FULL), self.stopping, f"job {job.id}: end")
        except REDIS_DOWN_ERRORS:
            raise  # stopping while Redis is down: its lease runs out and it resumes from its checkpoint
        except Exception as exc:
            log.exception("job %s: training crashed", job.id)
            return self.finish("failed", f"internal error while training: {type(exc).__name__}: {exc}")
        try:
            return until_redis(lambda: self.conclude(trainer, result), self.stopping, f"job {job.id}: end")
        except (StorageFull, OutOfMemoryError):
            return until_redis(lambda: self.finish("failed", STORAGE_FULL), self.stopping, f"job {job.id}: end")

    def prepare(self) -> Trainer:
        """The trainer, from the latest checkpoint if there is one; the record says where the run starts."""
        job, spec = self.job, self.job.spec
        resume_bytes = self.store.checkpoint(job.id)
        resume = from_bytes(resume_bytes) if resume_bytes else None
        start = resume.info.iterations if resume is not None else 0
        self.history.truncate(start)  # also from zero: the first run's points would be drawn twice
        resumed_from = job.resumed_from
        if resume is not None:
            resumed_from = [*resumed_from, start]
            log.info("job %s: resuming from the checkpoint at iteration %d %s", job.id, start,
                     INTERRUPTIONS.get(job.interrupted_by, ""))
        init = self.initial_model() if resume is None else None
        try:
            trainer = spec.trainer(self.store.target(job.id), self.device, resume, self.speed, init=init)
        except SpecError as exc:  # its start model was replaced by one of another shape since it was queued
            raise TrainingFailed(str(exc)) from None
        self.write(trainer.progress(), resumed_from)
        if init is not None:  # the start, as the job's first checkpoint: the lineage's link, and what it resumes from
            self.on_checkpoint(trainer.export())
        return trainer

    def initial_model(self) -> ModelFile | None:
        """The weights `start_from` names (continue, fork); TrainingFailed when they are gone since the upload."""
        name = self.job.spec.start_from
        if name is None or self.start_model is None:
            return None
        try:
            return self.start_model(name)
        except (KeyError, ValueError) as exc:  # ModelNotFound, CheckpointNotFound; BadReference
            raise TrainingFailed(f"the model to start from, {name!r}, is no longer there ({exc}); "
                                 "start again from another") from None

    def conclude(self, trainer: Trainer, result: TrainResult) -> str:
        """After training stopped: the last checkpoint, then succeeded, cancelled or back to the queue."""
        self.store_unsaved()
        if self.lease.lost.is_set():
            return "lease lost"
        self.write(trainer.progress(finished_early=result.finished_early))
        if result.status == "succeeded":
            return self.finish("succeeded", warning=self.export())
        if self.store.cancel_requested(self.job.id):
            return self.finish("cancelled")
        self.lease.release()
        self.store.suspend(self.job.id, self.token)  # worker shutdown: recovery sends it again, it resumes from here
        return "suspended"

    def should_stop(self) -> bool:
        if self.stopping.is_set() or self.lease.lost.is_set():
            return True
        if not self.outage.due():  # Redis is down: ask again after a pause, train at full speed meanwhile
            return False
        try:
            cancel = self.store.cancel_requested(self.job.id)
        except REDIS_DOWN_ERRORS as exc:  # keep training, ask again after the outage's pause
            self.outage.failed("cancel check", exc)
            return False
        self.outage.succeeded()
        return cancel

    def on_progress(self, p: Progress) -> None:
        """Every iteration: the loss history takes it; the record, every `progress_every` seconds (best effort)."""
        if p.loss is not None:
            self.history.add(p.iteration, p.loss)
        now = time.monotonic()
        if now - self.last_write < self.settings.progress_every or not self.outage.due():
            return
        self.last_write = now
        try:
            self.store_unsaved()  # the store is back: the checkpoints of the outage first, in order
            self.write(p)
        except STORE_DOWN_ERRORS as exc:  # progress is best effort; checkpoints are kept until the store is back
            self.outage.failed("progress", exc)
            return
        except OutOfMemoryError as exc:
            raise StorageFull(str(exc)) from exc
        self.outage.succeeded()

    def write(self, progress: Progress, resumed_from: list[int] | None = None) -> None:
        """The one way progress is written: the trainer's record with the loss history; refused: lease lost."""
        if not self.store.progress(self.job.id, self.token, progress, self.history, resumed_from):
            self.lease.lost.set()

    def on_checkpoint(self, model_file: ModelFile) -> None:
        """The whole file (to resume from) and, for the job's history, its weights alone (~35 KB), queued
        behind the checkpoints an outage kept, then stored unless the store is still down."""
        if self.unsaved:  # only the latest keeps its optimizer state (what a resume needs)
            self.unsaved[-1] = (None, *self.unsaved[-1][1:])
        weights = to_bytes(ModelFile(model_file.model, model_file.info))  # no target, no optimizer state
        self.unsaved.append((to_bytes(model_file), weights, model_file.info.iterations, model_file.info.final_loss))
        if not self.outage.due():
            return
        try:
            self.store_unsaved()
        except STORE_DOWN_ERRORS as exc:  # keep training: stored when the store is back (or at the run's end)
            self.outage.failed(f"checkpoint at iteration {model_file.info.iterations}", exc)
            return
        except OutOfMemoryError as exc:
            raise StorageFull(str(exc)) from exc
        self.outage.succeeded()

    def store_unsaved(self) -> None:
        """Store the checkpoints not stored yet, oldest first (each leaves the list once stored)."""
        while self.unsaved:
            data, weights, iteration, loss = self.unsaved[0]
            version = self.store.store_checkpoint(self.job.id, self.token, data or weights, iteration, loss,
                                                  weights)  # announced by the store
            self.unsaved.pop(0)
            if version < 0:
                self.unsaved.clear()
                self.lease.lost.set()
                return
            self.last_checkpoint = data or weights

    def export(self) -> str | None:
        """A copy of the final checkpoint in models_dir/jobs/ for this machine (Redis stays the source of
        truth); a warning for the record when it cannot be written."""
        data = self.last_checkpoint or self.store.checkpoint(self.job.id)
        assert data is not None  # a run that succeeded stored its last checkpoint
        path = self.export_path()
        try:
            write_atomic(path, data)
        except OSError as exc:  # disk full, read-only or unwritable folder: the job itself is fine
            log.warning("job %s: could not export the model to %s: %s", self.job.id, path, exc)
            return (f"the model could not be saved to {path} on worker {self.worker_id} ({exc.strerror or exc}); "
                    f"it is safe in Redis and served as usual at /api/models/{self.job.id}/file")
        return None

    def finish(self, status: JobStatus, error: str | None = None, warning: str | None = None) -> str:
        self.lease.release()
        finished = self.store.finish(self.job.id, self.token, status, error, warning)  # announced by the store
        if not finished and self.store.model_version(self.job.id) == 0:  # deleted meanwhile: its exported copy too
            self.export_path().unlink(missing_ok=True)
        return status

    def export_path(self) -> Path:
        return self.settings.models_dir / "jobs" / f"{self.job.id}.safetensors"
