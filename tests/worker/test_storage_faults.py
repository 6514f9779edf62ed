"""A run while its storage fails, against real Redis servers stopped and started under it: training goes
on at full speed through an outage (the cancel check backs off), the log says one line when it starts and
one when it ends, the checkpoints of the outage all reach the history, a full Redis (maxmemory) fails the
job cleanly with a reason instead of leaving it "running", and the re-queue line says the truth."""

from __future__ import annotations

import logging
import time

import pytest
import redis
import torch

from backend.config import Settings
from backend.nca import NCA, JobSpec, ModelFile, ModelInfo
from backend.storage.connection import connect
from backend.storage.embedded_redis import start_redis
from backend.storage.jobs import JobStore, new_job_id
from backend.worker.tasks import STORAGE_FULL, JobRun, Lease, Outage, requeued_words


def model_file(iteration: int) -> ModelFile:
    return ModelFile(NCA(), ModelInfo(grid_height=12, grid_width=12, iterations=iteration))


def claimed(store: JobStore, iterations: int = 1000) -> str:
    job_id = new_job_id()
    store.create(job_id, JobSpec.from_options({"name": "outage", "experiment": "growing",
                                               "iterations": iterations}), torch.rand(4, 12, 12))
    assert store.claim(job_id, "t", 60, "cpu", "w") == "ok"
    return job_id


class IdleLease(Lease):
    """The run's lease object without its renewal thread (the test drives the run's callbacks itself)."""

    def __init__(self, store: JobStore, job_id: str):
        super().__init__(store, job_id, "t", 60)


def test_outage_backs_off_logs_once_and_keeps_its_checkpoints(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    server = start_redis(data_dir=tmp_path / "redis")
    try:
        store = JobStore(connect(server.url))
        job_id = claimed(store)
        settings = Settings(redis_url=server.url, models_dir=tmp_path, progress_every=0.0)
        run = JobRun(store, store.get(job_id), "t", torch.device("cpu"), settings, IdleLease(store, job_id))
        run.on_checkpoint(model_file(100))
        server.stop()  # the outage starts
        caplog.set_level(logging.WARNING, logger="backend.worker.tasks")

        start = time.perf_counter()
        for _ in range(2000):  # the trainer asks every iteration
            assert run.should_stop() is False
        asked = time.perf_counter() - start
        assert run.outage.failures <= 3, run.outage.failures  # each failed call costs a client retry
        assert asked < 2.0, f"2000 cancel checks took {asked:.2f} s while Redis was down"
        for iteration in (200, 300):  # checkpoints inside the outage
            run.on_checkpoint(model_file(iteration))
            time.sleep(Outage.FIRST_PAUSE * 2)
        assert [entry[2] for entry in run.unsaved] == [200, 300]
        assert run.unsaved[0][0] is None and run.unsaved[1][0] is not None  # the latest keeps its optimizer

        server = start_redis(port=server.port, data_dir=tmp_path / "redis")  # Redis is back, with its AOF
        time.sleep(Outage.MAX_PAUSE)
        run.on_checkpoint(model_file(400))
        assert [c.iteration for c in store.history(job_id)] == [100, 200, 300, 400]
        assert run.unsaved == [] and not run.outage.down
        lines = [r.getMessage() for r in caplog.records if job_id in r.getMessage()]
        assert len(lines) == 2, lines  # one when it starts, one when it ends (with the count)
        assert "unreachable" in lines[0] and "calls failed meanwhile" in lines[1]
    finally:
        server.stop()


def test_a_full_redis_fails_the_running_job_cleanly(tmp_path) -> None:
    """maxmemory with noeviction, filled up: the run's next write is refused, and the job ends `failed`
    with "storage is full" (not left "running"); what was stored stays readable."""
    server = start_redis(data_dir=tmp_path / "redis")
    try:
        client = connect(server.url)
        store = JobStore(client)
        job_id = claimed(store, iterations=4)
        settings = Settings(redis_url=server.url, models_dir=tmp_path, progress_every=0.0)
        job = store.get(job_id)
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", used // 2)  # over it already: every write that adds data is refused
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("filler", b"x" * 4096)
        with Lease(store, job_id, "t", 60) as lease:
            status = JobRun(store, job, "t", torch.device("cpu"), settings, lease).run()
        done = store.get(job_id)
        assert (status, done.status) == ("failed", "failed")
        assert done.error == STORAGE_FULL
        assert store.target(job_id).shape == (4, 12, 12)  # nothing stored is lost
        assert client.sismember("nca:jobs:active", job_id) == 0
        client.config_set("maxmemory", 0)  # memory freed: everything works again
        assert claimed(store).startswith("")
    finally:
        server.stop()


def test_the_requeue_line_says_whether_there_is_a_checkpoint(redis_url: str) -> None:
    store = JobStore(connect(redis_url))
    job_id = claimed(store)
    assert "no checkpoint yet" in requeued_words(store.get(job_id))
    store.store_checkpoint(job_id, "t", b"weights", 100, 0.1)
    words = requeued_words(store.get(job_id))
    assert "resume from its checkpoint at iteration 100" in words and "no checkpoint" not in words
