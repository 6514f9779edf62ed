"""Worker start and stop: presence heartbeat, crash recovery, cooperative shutdown.

At start (worker_ready) the worker measures its training speed (backend.nca.train.calibrate). A
background thread keeps `nca:worker:<id>` alive with that speed (for /api/health and the API's
estimates) and, on the one worker elected for it (`nca:elected:lease-sweep`), re-queues jobs whose worker
vanished (lease expired) every heartbeat: one script reads only the due lease deadlines (`nca:leases`). If the
elected worker dies, another takes over within LEASE_SWEEP_HOLD heartbeats.
"""

from __future__ import annotations

import logging
import threading
import time

import torch
from celery import Celery, signals

from backend.nca.train import calibrate
from backend.worker.cpus import usable_cores

from .tasks import TrainingWorker, recover_orphans

__all__ = ["Heartbeat", "connect_signals", "recover_orphans"]

log = logging.getLogger(__name__)


SWEEP_EVERY = 600.0  # seconds between orphan sweeps of the artifact store, by one elected worker
LEASE_SWEEP_HOLD = 3  # heartbeats the lease sweeper's election lasts unless renewed (its successor waits that long)


class Heartbeat(threading.Thread):
    def __init__(self, worker: TrainingWorker):
        super().__init__(name="nca-heartbeat", daemon=True)
        self.worker, self.started_at = worker, time.time()
        self.next_sweep = time.monotonic() + 60.0  # not in the busy start
        self.period = min(worker.settings.lease_seconds / 3, 5.0)
        self.done = threading.Event()

    def beat(self) -> None:
        worker = self.worker
        info = {"id": worker.id, "device": str(worker.device), "job": worker.current_job,
                "started_at": self.started_at, "seen_at": time.time(), "threads": torch.get_num_threads(),
                "speed": worker.speed.as_dict()}
        worker.storage.workers.beat(worker.id, info, ttl_seconds=3 * self.period)

    def run(self) -> None:
        while True:
            try:
                self.beat()
                if not self.worker.stopping.is_set():  # a stopping worker leaves its job to the next one
                    self.recover()
                    self.worker.storage.deletion.sweep_if_due()  # retention (NCA_RETENTION_DAYS), one process at a time
                    self.sweep()  # orphaned artifacts, one elected worker
            except Exception:  # Redis down: keep trying, the worker itself stays up
                log.warning("heartbeat failed", exc_info=True)
            if self.done.wait(self.period):
                return

    def recover(self) -> None:
        """Re-queue the jobs whose lease expired, if this worker is the elected sweeper (one at a time)."""
        worker = self.worker
        if worker.storage.jobs.elect("lease-sweep", worker.id, LEASE_SWEEP_HOLD * self.period):
            recover_orphans(worker.storage, skip=worker.current_job)

    def sweep(self) -> None:
        """Every SWEEP_EVERY, on the one elected worker: delete the artifact store's orphans (objects a crash
        left with no record pointing at them)."""
        if time.monotonic() < self.next_sweep:
            return
        self.next_sweep = time.monotonic() + SWEEP_EVERY
        jobs = self.worker.storage.jobs
        if jobs.elect("orphan-sweep", self.worker.id, 2 * SWEEP_EVERY):
            swept = jobs.sweep_orphans()
            if swept:
                log.info("artifact store: %d orphaned objects deleted", swept)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)
        try:
            self.worker.storage.workers.forget(self.worker.id)
            self.worker.storage.jobs.resign("lease-sweep", self.worker.id)  # the next worker sweeps at once
        except Exception:
            log.warning("could not remove the presence key", exc_info=True)


def connect_signals(celery: Celery, worker: TrainingWorker) -> None:
    """Start the heartbeat when `celery`'s worker is ready, stop training and the heartbeat when it stops."""
    heartbeat = Heartbeat(worker)

    def ready(sender: object = None, **_: object) -> None:
        if getattr(sender, "app", None) is not celery:
            return
        torch.set_num_threads(worker.settings.torch_threads or usable_cores())  # not the machine's: ours
        try:  # about a second: what this device does, for the API's estimates and the first plan of a budget
            worker.speed = calibrate(worker.device)
        except Exception:  # a device that cannot train fails its jobs with the reason; the guess stays
            log.warning("could not measure the training speed", exc_info=True)
        log.info("worker %s ready; training on %s (%.3g s per cell-step)", worker.id, worker.device,
                 worker.speed.cell_step_seconds)
        heartbeat.start()

    def shutting_down(**_: object) -> None:  # sent with the host name only; a process runs one worker
        worker.stopping.set()  # the running job checkpoints and is given back to the queue

    def shutdown(sender: object = None, **_: object) -> None:
        if getattr(sender, "app", None) is celery and heartbeat.is_alive():
            heartbeat.stop()

    signals.worker_ready.connect(ready, weak=False)
    signals.worker_shutting_down.connect(shutting_down, weak=False)
    signals.worker_shutdown.connect(shutdown, weak=False)
