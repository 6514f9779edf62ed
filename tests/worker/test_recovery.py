"""Sending jobs when Redis is unreachable: a quick, clear failure."""

from __future__ import annotations

import time

import pytest
from kombu.exceptions import OperationalError

from backend.config import Settings
from backend.storage.embedded_redis import free_port
from backend.worker.celery_app import TRAIN_TASK, make_celery


def test_sending_to_an_unreachable_broker_fails_fast() -> None:
    """The API answers 503 for OperationalError; a result backend used to retry ~20 s and raise RuntimeError."""
    celery = make_celery(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    started = time.monotonic()
    with pytest.raises(OperationalError):
        celery.send_task(TRAIN_TASK, args=["0" * 32])
    assert time.monotonic() - started < 5
