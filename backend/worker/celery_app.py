"""The Celery app: Redis broker, settings for long GPU jobs.

Run a worker with the contract command:
    celery -A backend.worker.celery_app worker --pool=solo --concurrency=1 --prefetch-multiplier=1 --loglevel=INFO
"""

from __future__ import annotations

from celery import Celery

from backend.config import Settings, get_settings

TRAIN_TASK = "nca.train_job"
QUEUE = "nca-training"


def make_celery(settings: Settings) -> Celery:
    """One app per settings: the worker's below, and one per API app (which only sends tasks)."""
    celery = Celery("nca", broker=settings.redis_url, include=["backend.worker.tasks", "backend.worker.lifecycle"])
    celery.conf.update(
        # No result backend: the job record in Redis is the result. With one, every send first subscribed
        # to the task's result channel, and with Redis down that retried for ~20 s, then raised RuntimeError.
        task_ignore_result=True,
        task_default_queue=QUEUE,
        # A job is acknowledged only once it finished; if the worker process is lost, the message is
        # redelivered (after visibility_timeout; the lease in backend.storage.jobs re-queues much sooner).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # one job at a time per worker: no job waits behind a busy GPU
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        # The solo pool runs the task in the worker process itself: nothing is forked, so CUDA is
        # initialised only in the process that trains.
        worker_pool="solo",
        worker_concurrency=1,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        # The API answers 503 quickly when Redis is down instead of retrying a publish for long.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        worker_send_task_events=False,
    )
    return celery


app = make_celery(get_settings())
