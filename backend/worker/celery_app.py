"""The workers' Celery app: Redis broker, settings for long GPU jobs.

Run a worker with the contract command:
    celery -A backend.worker.celery_app worker --pool=solo --concurrency=1 --prefetch-multiplier=1 --loglevel=INFO

`make_celery(settings)` builds an app and the one `TrainingWorker` behind its task; `app`, what
the command loads, is built from the environment's settings when first asked for, not at import.
"""

from __future__ import annotations

from functools import cache

from celery import Celery

from backend.config import Settings, get_settings
from backend.storage.queue import TRAIN_TASK, celery_config

from .lifecycle import connect_signals
from .tasks import TrainingWorker


def make_celery(settings: Settings) -> Celery:
    celery = Celery("nca", broker=settings.redis_url)
    celery.conf.update(
        celery_config(settings),  # what the API's sender shares: queue, serialisation, broker keys
        # A job is acknowledged only once it finished; if the worker process is lost, the message is
        # redelivered (after visibility_timeout; the lease in backend.storage.jobs re-queues much sooner).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Losing the broker connection (a Redis restart) must not cancel the job being trained: it keeps
        # training, its lease is taken back once Redis is up again (backend.storage.jobs), and only a
        # worker that is really gone is recovered. True (Celery 6's default) would cancel it, and the
        # job would be counted as lost and trained again from its checkpoint.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_prefetch_multiplier=1,  # one job at a time per worker: no job waits behind a busy GPU
        # The solo pool runs the task in the worker process itself: nothing is forked, so CUDA is
        # initialised only in the process that trains.
        worker_pool="solo",
        worker_concurrency=1,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
    )
    worker = TrainingWorker(settings, celery)
    celery.task(name=TRAIN_TASK)(_train_job(worker))
    connect_signals(celery, worker)
    return celery


def _train_job(worker: TrainingWorker):
    def train_job(job_id: str) -> dict:
        """Train one job (backend.worker.tasks.TrainingWorker.train)."""
        return worker.train(job_id)

    return train_job


@cache
def _default_app() -> Celery:
    return make_celery(get_settings())


def __getattr__(name: str) -> Celery:
    """`app` (what `celery -A backend.worker.celery_app` loads), built on first access."""
    if name == "app":
        return _default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
