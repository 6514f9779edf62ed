"""Sending jobs when Redis is unreachable: a quick, clear failure, and crash recovery loses no job over it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis
import torch
from kombu.exceptions import OperationalError

from backend.config import Settings
from backend.nca import JobSpec
from backend.storage.connection import connect
from backend.storage.embedded_redis import free_port
from backend.storage.jobs import ACTIVE_KEY, JobStore, job_key, new_job_id
from backend.storage.queue import QUEUE, TRAIN_TASK, make_sender
from backend.worker.tasks import MAX_WORKERS_LOST, JobRun, Lease
from tests.conftest import REPO_ROOT

# Recovery as a worker's heartbeat runs it, with the job store on argv[1] and Celery's broker on REDIS_URL.
RECOVER = """
import sys
from backend.config import get_settings
from backend.storage.connection import connect
from backend.storage.shared import Storage
from backend.worker import lifecycle
from backend.worker.celery_app import make_celery
storage = Storage(connect(sys.argv[1]), get_settings(), make_celery(get_settings()))
try:
    print("recovered", sorted(lifecycle.recover_orphans(storage)))
except Exception as exc:
    print("failed", type(exc).__name__)
"""


def test_sending_to_an_unreachable_broker_fails_fast() -> None:
    """The API answers 503 for OperationalError; a result backend used to retry ~20 s and raise RuntimeError."""
    celery = make_sender(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    started = time.monotonic()
    with pytest.raises(OperationalError):
        celery.send_task(TRAIN_TASK, args=["0" * 32])
    assert time.monotonic() - started < 5


def recover(store_url: str, broker_url: str) -> str:
    env = {**os.environ, "REDIS_URL": broker_url}
    done = subprocess.run([sys.executable, "-c", RECOVER, store_url], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_a_failed_resend_keeps_every_recovered_job_for_the_next_round(redis_url: str) -> None:
    """Used to put back only the job whose send failed: the others stayed queued with no message."""
    store = JobStore(connect(redis_url))
    jobs = sorted(new_job_id() for _ in range(3))
    for job_id in jobs:
        store.create(job_id, JobSpec.from_options({"name": "orphan", "experiment": "growing", "iterations": 100}),
                     torch.rand(4, 12, 12))
        assert store.claim(job_id, "gone", 0.05, "cpu", "lost-worker") == "ok"  # a worker that then died
    time.sleep(0.2)  # its leases expire

    assert recover(redis_url, f"redis://127.0.0.1:{free_port()}/0") == "failed OperationalError"
    client = redis.Redis.from_url(redis_url)
    assert sorted(m.decode() for m in client.smembers(ACTIVE_KEY)) == jobs  # all kept for the next round
    assert client.llen(QUEUE) == 0

    assert recover(redis_url, redis_url) == f"recovered {jobs}"  # the broker is back: every one is sent
    assert client.llen(QUEUE) == 3 and client.scard(ACTIVE_KEY) == 0
    assert {store.get(job_id).status for job_id in jobs} == {"queued"}


@pytest.mark.parametrize("lost", [0, MAX_WORKERS_LOST])
def test_only_lost_workers_count_towards_giving_up(redis_url: str, tmp_path, lost: int) -> None:
    """Many shutdowns (deploys) used to fail a job too: the cap counted every start."""
    store = JobStore(connect(redis_url))
    job_id = new_job_id()
    options = {"name": "restarted", "experiment": "growing", "iterations": 2, "batch_size": 1, "min_steps": 1,
               "max_steps": 2}
    store.create(job_id, JobSpec.from_options(options), torch.rand(4, 12, 12))
    redis.Redis.from_url(redis_url).hset(job_key(job_id), mapping={"attempts": 3 * MAX_WORKERS_LOST,
                                                                   "workers_lost": lost})  # as if it had happened
    assert store.claim(job_id, "t", 30, "cpu", "w") == "ok"
    settings = Settings(redis_url=redis_url, models_dir=tmp_path)
    with Lease(store, job_id, "t", 30) as lease:
        status = JobRun(store, store.get(job_id), "t", torch.device("cpu"), settings, lease).run()
    job = store.get(job_id)
    if lost:
        assert (status, job.status) == ("failed", "failed") and f"lost {lost} times" in job.error
    else:
        assert (status, job.status, job.iteration) == ("succeeded", "succeeded", 2)
