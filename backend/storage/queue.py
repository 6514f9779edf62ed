"""The training queue's contract, shared by the API (which sends) and the workers (which consume).

A message is the Celery task TRAIN_TASK on the queue QUEUE with one argument, the job id
(`train_args`); the job's record in Redis (backend.storage.jobs) says everything else, so a
message can be sent again safely: the job's lease lets only one worker train it.

Redis is Celery's broker. The queue is the list QUEUE; kombu keeps each message a worker has
received but not acknowledged in the hash UNACKED_KEY (delivery tag -> [message, exchange, routing
key]) and the sorted set UNACKED_INDEX_KEY (delivery tag -> time received), and sends it again
after `visibility_timeout`. A worker killed mid-job never acknowledges; when recovery takes its job
over, `forget_deliveries` drops that message, so these keys do not grow with each crash.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import redis
from celery import Celery

from backend.config import Settings

from . import keys

TRAIN_TASK = "nca.train_job"
QUEUE = keys.TRAINING_QUEUE.pattern
UNACKED_KEY = keys.UNACKED.pattern  # kombu's defaults, set explicitly in celery_config so that the names are ours
UNACKED_INDEX_KEY = keys.UNACKED_INDEX.pattern


def train_args(job_id: str) -> list[str]:
    """The message's arguments."""
    return [job_id]


def celery_config(settings: Settings) -> dict[str, Any]:
    """What the sending side and the workers' Celery apps share: broker keys, serialisation, publishing."""
    return {
        # No result backend: the job record in Redis is the result. With one, every send first subscribed
        # to the task's result channel, and with Redis down that retried for ~20 s, then raised RuntimeError.
        "task_ignore_result": True,
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout,
                                     "unacked_key": UNACKED_KEY, "unacked_index_key": UNACKED_INDEX_KEY},
        # The API answers 503 quickly when Redis is down instead of retrying a publish for long.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                      "interval_max": 0.5},
    }


def make_sender(settings: Settings) -> Celery:
    """A Celery app that only sends training messages (the API's)."""
    celery = Celery("nca-sender", broker=settings.redis_url, set_as_current=False)
    celery.conf.update(celery_config(settings))
    return celery


class TrainingQueue:
    """Send a job's message, count the waiting ones, forget a lost worker's delivery."""

    def __init__(self, client: redis.Redis, celery: Celery):
        self._client, self._celery = client, celery

    def send(self, job_id: str) -> None:
        """Raises kombu's OperationalError when the broker cannot be reached."""
        self._celery.send_task(TRAIN_TASK, args=train_args(job_id), queue=QUEUE)

    def waiting(self) -> int:
        """Messages in the queue that no worker has received yet."""
        return self._client.llen(QUEUE)

    def forget_deliveries(self, job_id: str) -> int:
        """Drop the received-but-unacknowledged messages for `job_id` (their worker is gone); how many."""
        tags = [tag for tag, raw in self._client.hgetall(UNACKED_KEY).items() if _job_of(raw) == job_id]
        if tags:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.hdel(UNACKED_KEY, *tags)
                pipe.zrem(UNACKED_INDEX_KEY, *tags)
                pipe.execute()
        return len(tags)


def _job_of(raw: bytes) -> str | None:
    """The job id of an unacknowledged training message; None for anything else."""
    try:
        message = json.loads(raw)[0]
        if message["headers"]["task"] != TRAIN_TASK:
            return None
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]  # task protocol 2: [args, kwargs, embed]
        return args[0] if isinstance(args, list) and args and isinstance(args[0], str) else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None
