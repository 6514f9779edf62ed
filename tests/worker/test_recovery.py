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
from backend.nca import JobSpec, Progress, Trainer
from backend.nca.modelfile import to_bytes
from backend.storage.connection import connect
from backend.storage.embedded_redis import free_port
from backend.storage.jobs import LEASES_KEY, JobStore, job_key, new_job_id
from backend.storage.queue import QUEUE, TRAIN_TASK, make_sender
from backend.worker.losses import LossHistory
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
    assert sorted(m.decode() for m in client.zrange(LEASES_KEY, 0, -1)) == jobs  # all kept for the next round
    assert client.llen(QUEUE) == 0

    assert recover(redis_url, redis_url) == f"recovered {jobs}"  # the broker is back: every one is sent
    assert client.llen(QUEUE) == 3 and client.zcard(LEASES_KEY) == 0
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


def lost_worker_run(store: JobStore, job_id: str, history: LossHistory, checkpoint_at: int | None = None) -> None:
    """A first worker trains (writing progress, maybe a checkpoint), then is killed; recovery re-queues the job."""
    assert store.claim(job_id, "first", 0.05, "cpu", "killed") == "ok"
    if checkpoint_at is not None:
        trainer = Trainer(store.target(job_id), store.get(job_id).spec.train)
        trainer.iteration = checkpoint_at  # an untrained model stands for the first worker's checkpoint
        assert store.store_checkpoint(job_id, "first", to_bytes(trainer.export()), checkpoint_at, 0.5) == 1
    assert store.progress(job_id, "first", Progress(history.points[-1][0], store.get(job_id).total, None), history)
    time.sleep(0.1)  # its lease expires
    assert store.recover_orphans() == [job_id]


def tiny_job(store: JobStore, **options: object) -> str:
    job_id = new_job_id()
    values = {"name": "tiny", "experiment": "growing", "batch_size": 1, "min_steps": 1, "max_steps": 2,
              "checkpoint_every": 1000, **options}
    store.create(job_id, JobSpec.from_options(values), torch.rand(4, 12, 12))
    return job_id


def test_a_restart_from_zero_does_not_draw_the_loss_history_twice(redis_url: str, tmp_path) -> None:
    """Killed before its first checkpoint: the next run starts at 0, so the first run's points go."""
    store = JobStore(connect(redis_url))
    job_id = tiny_job(store, iterations=24)
    lost_worker_run(store, job_id, LossHistory([(i, 1.0 / i) for i in range(1, 13)]))
    assert store.claim(job_id, "second", 30, "cpu", "w") == "ok"
    settings = Settings(redis_url=redis_url, models_dir=tmp_path)
    with Lease(store, job_id, "second", 30) as lease:
        assert JobRun(store, store.get(job_id), "second", torch.device("cpu"), settings, lease).run() == "succeeded"
    iterations = [it for it, _ in store.get(job_id).loss_history]
    assert iterations == list(range(1, 25)), iterations  # was [1, ..., 12, 1, ..., 24]: the chart zig-zagged


def test_a_resumed_run_starts_at_its_checkpoint_as_the_record_says(redis_url: str, tmp_path) -> None:
    """docs/api.md: after a lost worker, `iteration` goes back to `checkpoint_iteration` (not below it) and
    the loss history after it is drawn again."""
    store = JobStore(connect(redis_url))
    job_id = tiny_job(store, iterations=40)
    lost_worker_run(store, job_id, LossHistory([(i, 1.0 / i) for i in range(1, 17)]), checkpoint_at=10)
    before = store.get(job_id)
    assert (before.status, before.iteration, before.checkpoint_iteration) == ("queued", 16, 10)
    assert store.claim(job_id, "second", 30, "cpu", "w") == "ok"
    settings = Settings(redis_url=redis_url, models_dir=tmp_path)
    with Lease(store, job_id, "second", 30) as lease:
        run = JobRun(store, store.get(job_id), "second", torch.device("cpu"), settings, lease)
        trainer = run.prepare()
        resumed = store.get(job_id)
        assert (trainer.iteration, resumed.iteration, resumed.resumed_from) == (10, 10, [10])
        assert [it for it, _ in resumed.loss_history] == list(range(1, 11))
        result = trainer.run(run.on_progress, run.should_stop, run.on_checkpoint)
        assert run.conclude(trainer, result) == "succeeded"
    done = store.get(job_id)
    assert (done.iteration, done.checkpoint_iteration, done.workers_lost) == (40, 40, 1)
    assert [it for it, _ in done.loss_history] == list(range(1, 41))
