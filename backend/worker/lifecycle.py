"""Worker start and stop: presence heartbeat, crash recovery, cooperative shutdown.

A background thread keeps `nca:worker:<id>` alive (for /api/health) and re-queues jobs whose
worker vanished (lease expired): at start (worker_ready) and then every half lease.
"""

from __future__ import annotations

import logging
import threading
import time

import torch
from celery import signals

from backend.config import get_settings
from backend.nca.model import pick_device
from backend.storage import workers

from . import tasks

log = logging.getLogger(__name__)


def recover_orphans() -> list[str]:
    store = tasks.job_store()
    recovered = store.recover_orphans()
    for i, job_id in enumerate(recovered):
        try:
            tasks.train_job.apply_async(args=[job_id])
        except Exception:
            store.mark_orphan(*recovered[i:])  # this one and the rest, not sent yet: try again next round
            raise
        log.info("job %s: its worker stopped or was lost; re-queued to resume from its checkpoint", job_id)
    return recovered


class Heartbeat(threading.Thread):
    def __init__(self, device: str):
        super().__init__(name="nca-heartbeat", daemon=True)
        self.device, self.started_at = device, time.time()
        self.period = min(get_settings().lease_seconds / 3, 5.0)
        self.done = threading.Event()

    def beat(self) -> None:
        info = {"id": tasks.WORKER_ID, "device": self.device, "job": tasks.current_job,
                "started_at": self.started_at, "seen_at": time.time()}
        workers.beat(tasks.job_store().client, tasks.WORKER_ID, info, ttl_seconds=3 * self.period)

    def run(self) -> None:
        while True:
            try:
                self.beat()
                if not tasks.SHUTDOWN.is_set():  # a stopping worker leaves its job to the next one
                    recover_orphans()
            except Exception:  # Redis down: keep trying, the worker itself stays up
                log.warning("heartbeat failed", exc_info=True)
            if self.done.wait(self.period):
                return


_heartbeat: Heartbeat | None = None


@signals.worker_ready.connect
def _start_heartbeat(**_: object) -> None:
    global _heartbeat
    if get_settings().torch_threads:
        torch.set_num_threads(get_settings().torch_threads)
    device = str(pick_device(get_settings().device))
    log.info("worker %s ready; training on %s", tasks.WORKER_ID, device)
    _heartbeat = Heartbeat(device)
    _heartbeat.start()


@signals.worker_shutting_down.connect
def _stop_training(**_: object) -> None:
    tasks.SHUTDOWN.set()  # the running job checkpoints and is given back to the queue


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.done.set()
        _heartbeat.join(timeout=5)
        try:
            workers.forget(tasks.job_store().client, tasks.WORKER_ID)
        except Exception:
            log.warning("could not remove the presence key", exc_info=True)
