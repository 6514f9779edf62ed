"""Lease deadlines in one sorted set (`nca:leases`), swept by one elected worker, against a real Redis.

The guarantees of recovery itself (once, never twice; a Redis restart is not a lost worker) are in
tests/storage/test_jobs_store.py, tests/worker and tests/hardening/test_faults.py; here: where the
deadlines live, that a sweep costs the same however many jobs are active, the upgrade from the previous
version's active set, and the election.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
import torch

from backend.config import Settings
from backend.nca import JobSpec
from backend.storage.artifacts import artifact_store
from backend.storage.connection import connect
from backend.storage.jobs import ACTIVE_KEY, LEASES_KEY, JobStore, job_key, new_job_id
from backend.storage.queue import QUEUE
from backend.storage.shared import Storage
from backend.worker.lifecycle import Heartbeat


def new_job(store: JobStore) -> str:
    job_id = new_job_id()
    store.create(job_id, JobSpec.from_options({"name": "lease", "experiment": "growing", "iterations": 100}),
                 torch.rand(4, 8, 8))
    return job_id


def redis_ms(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds * 1000 + micros / 1000


def test_the_deadline_is_written_with_the_lease_and_goes_with_the_job(store: JobStore, client: redis.Redis) -> None:
    job_id = new_job(store)
    assert client.zscore(LEASES_KEY, job_id) is None  # queued, not claimed: nothing to recover
    assert store.claim(job_id, "a", 5, "cpu", "w") == "ok"
    assert abs(client.zscore(LEASES_KEY, job_id) - (redis_ms(client) + 5000)) < 500  # Redis's clock
    assert store.refresh_lease(job_id, "a", 60)
    assert abs(client.zscore(LEASES_KEY, job_id) - (redis_ms(client) + 60000)) < 500
    assert not store.refresh_lease(job_id, "b", 600)  # not the owner: nothing moves
    assert client.zscore(LEASES_KEY, job_id) < redis_ms(client) + 61000
    assert store.finish(job_id, "a", "succeeded")
    assert client.zscore(LEASES_KEY, job_id) is None

    given_back = new_job(store)  # a worker shutting down: due at once, recovery resends it
    assert store.claim(given_back, "a", 60, "cpu", "w") == "ok" and store.suspend(given_back, "a")
    assert client.zscore(LEASES_KEY, given_back) == 0
    assert store.cancel(given_back) == "cancelled"  # cancelled before its resend: nothing left to recover
    assert client.zscore(LEASES_KEY, given_back) is None and store.recover_orphans() == []


def test_a_sweep_reads_only_the_due_leases(store: JobStore, client: redis.Redis) -> None:
    """The previous sweep ran one script per active job: 1,000 active jobs were 1,000 scripts per worker per beat."""
    alive = [new_job(store) for _ in range(300)]
    for job_id in alive:
        assert store.claim(job_id, "alive", 60, "cpu", "w") == "ok"
    lost = new_job(store)
    assert store.claim(lost, "gone", 0.05, "cpu", "w") == "ok"
    time.sleep(0.1)
    store.recover_orphans()

    client.config_resetstat()
    assert store.recover_orphans() == []
    calls = {name: stats["calls"] for name, stats in client.info("commandstats").items()}
    # CONFIG RESETSTAT, INFO (the uptime), one script and its TIME, EXISTS (the legacy set) and ZRANGEBYSCORE:
    # none per active job.
    assert calls.get("cmdstat_evalsha") == 1 and sum(calls.values()) <= 6, calls
    assert calls.get("cmdstat_hget", 0) == 0 and calls.get("cmdstat_pttl", 0) == 0, calls
    assert store.get(lost).status == "queued" and store.get(lost).workers_lost == 1
    assert {store.get(job_id).status for job_id in alive[:5]} == {"running"}


def test_more_due_than_a_batch_are_all_recovered_once(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.storage import jobs

    monkeypatch.setattr(jobs, "SWEEP_BATCH", 7)
    lost = sorted(new_job(store) for _ in range(20))
    for job_id in lost:
        assert store.claim(job_id, "gone", 0.05, "cpu", "w") == "ok"
    time.sleep(0.1)
    assert sorted(store.recover_orphans()) == lost
    assert store.recover_orphans() == []
    assert {store.get(job_id).workers_lost for job_id in lost} == {1}


def test_upgrade_in_place_from_the_active_set(store: JobStore, client: redis.Redis, redis_url: str,
                                             tmp_path: Path) -> None:
    """Jobs claimed by the previous version: in `nca:jobs:active`, no deadline. The first sweep moves them."""
    running, lost, given_back, done = (new_job(store) for _ in range(4))
    for job_id in (running, lost, given_back, done):
        assert store.claim(job_id, "old", 0.5 if job_id == lost else 30, "cpu", "w") == "ok"
    assert store.suspend(given_back, "old") and store.finish(done, "old", "succeeded")
    client.delete(job_key(lost, "lease"))  # its worker died
    client.delete(LEASES_KEY)
    client.sadd(ACTIVE_KEY, running, lost, given_back, done)  # what the previous version left
    time.sleep(0.6)  # past the restart grace of the test's Redis for `lost` (a lease's length of uptime)

    fresh = JobStore(connect(redis_url), artifacts=artifact_store(str(tmp_path / "artifacts")))  # a new process
    assert sorted(fresh.recover_orphans()) == sorted([lost, given_back])
    assert not client.exists(ACTIVE_KEY)
    assert client.zscore(LEASES_KEY, running) > redis_ms(client) + 20000  # its lease's end
    assert client.zscore(LEASES_KEY, done) is None
    assert fresh.backfill_leases() == 0 and fresh.recover_orphans() == []  # idempotent
    client.sadd(ACTIVE_KEY, running)  # a worker of the previous version still renewing (a rolling upgrade)
    assert fresh.recover_orphans() == [] and not client.exists(ACTIVE_KEY)
    assert (store.get(lost).workers_lost, store.get(given_back).workers_lost) == (1, 0)


def test_after_a_redis_restart_a_running_job_waits_a_lease_then_is_recovered(tmp_path: Path) -> None:
    """Every lease expired while Redis was down: the owner gets a lease's length to come back."""
    from backend.storage.embedded_redis import start_redis

    server = start_redis(data_dir=tmp_path)  # just started: its uptime is under a second
    try:
        client = connect(server.url)
        store = JobStore(client, artifacts=artifact_store(str(tmp_path / "artifacts")))
        job_id = new_job(store)
        assert store.claim(job_id, "a", 2.5, "cpu", "w1") == "ok"
        client.delete(job_key(job_id, "lease"))  # as if it expired while Redis was down
        client.zadd(LEASES_KEY, {job_id: 0})  # and its deadline passed
        assert store.recover_orphans() == []  # too soon after the (re)start to call the owner lost
        deadline = client.zscore(LEASES_KEY, job_id)
        assert redis_ms(client) < deadline <= redis_ms(client) + 2500  # looked at again when the grace ends
        recovered: list[str] = []
        for _ in range(3):  # the uptime is read in whole seconds: the grace may take a second look
            time.sleep(max(0.0, client.zscore(LEASES_KEY, job_id) - redis_ms(client)) / 1000 + 0.1)
            recovered = store.recover_orphans()
            if recovered:
                break
        assert recovered == [job_id]  # nobody came back: lost
        assert store.get(job_id).workers_lost == 1
    finally:
        server.stop()


def test_one_elected_worker_sweeps_and_another_takes_over_when_it_stops(redis_url: str, client: redis.Redis,
                                                                         tmp_path: Path) -> None:
    settings = Settings(redis_url=redis_url, models_dir=tmp_path, artifacts=str(tmp_path / "artifacts"),
                        lease_seconds=30)
    first, second = (Heartbeat(SimpleNamespace(id=name, settings=settings, current_job=None,
                                               storage=Storage.connect(settings), stopping=None))
                     for name in ("worker-1", "worker-2"))
    store = first.worker.storage.jobs

    def orphan() -> str:
        job_id = new_job(store)
        assert store.claim(job_id, "gone", 0.05, "cpu", "w") == "ok"
        time.sleep(0.1)
        return job_id

    one = orphan()
    first.recover()  # elected: it sweeps
    assert store.get(one).status == "queued" and client.llen(QUEUE) == 1
    two = orphan()
    second.recover()  # not elected: leaves it
    assert store.get(two).status == "running"
    store.resign("lease-sweep", "worker-2")  # not its election: nothing happens
    second.recover()
    assert store.get(two).status == "running"
    store.resign("lease-sweep", "worker-1")  # what Heartbeat.stop does when a worker shuts down
    second.recover()
    assert store.get(two).status == "queued" and client.llen(QUEUE) == 2
