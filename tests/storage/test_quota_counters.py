"""The active-job caps as counters (backend/storage/quota.py), against a real Redis: exact under concurrent
uploads, back to 0 after every way a job ends, a lost worker's job still counting, and the upgrade from the
previous version's sorted set. The 429 answers themselves: tests/owners, tests/hardening/test_access_and_quotas.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
import torch

from backend.nca import JobSpec
from backend.storage import keys
from backend.storage.connection import connect
from backend.storage.jobs import JobStore, job_key, new_job_id
from backend.storage.quota import (
    COUNTS_KEY,
    JOBS_KEY,
    LEGACY_ACTIVE_KEY,
    LEGACY_JOB_SCORE,
    LEGACY_OWNER_KEY,
    PENDING_PREFIX,
    JobQuota,
    QuotaExceeded,
    Reservation,
)
from backend.storage.retention import Deletion


def quota(client: redis.Redis, total: int = 100, per_client: int = 100, per_owner: int = 100) -> JobQuota:
    return JobQuota(client, total, per_client, per_owner)


def submit(store: JobStore, q: JobQuota, address: str = "10.0.0.1", owner: str | None = "alice") -> str:
    """What POST /api/jobs does: reserve, create the job, settle."""
    reservation = q.reserve(address, time.time(), owner)
    job_id = new_job_id()
    store.create(job_id, JobSpec.from_options({"name": "q", "experiment": "growing", "iterations": 10}),
                 torch.rand(4, 8, 8))
    q.settle(reservation, job_id)
    return job_id


def test_concurrent_uploads_never_overshoot(client: redis.Redis, redis_url: str) -> None:
    """40 uploads at once, from 40 connections, against an owner cap of 7 and a total cap of 9."""
    results: list[str] = []
    barrier = threading.Barrier(40)

    def one(i: int) -> None:
        q = JobQuota(connect(redis_url), 9, 100, 7)
        barrier.wait()
        try:
            q.reserve(f"10.0.0.{i}", time.time(), "alice" if i % 2 else f"other-{i}")
            results.append("ok-alice" if i % 2 else "ok-other")
        except QuotaExceeded:
            results.append("refused")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count("ok-alice") <= 7 and results.count("ok-alice") + results.count("ok-other") == 9
    assert client.zcard(PENDING_PREFIX + "total") == 9 and client.zcard(PENDING_PREFIX + "o:alice") <= 7


def test_counters_go_back_to_zero_however_a_job_ends(store: JobStore, client: redis.Redis, tmp_path: Path) -> None:
    q = quota(client)
    finished, cancelled, unsent, deleted, running_deleted, refused = (submit(store, q) for _ in range(6))
    assert q.counts() == {"total": 6, "a:10.0.0.1": 6, "o:alice": 6}
    assert set(q.job_ids()) == {finished, cancelled, unsent, deleted, running_deleted, refused}

    assert store.claim(finished, "w", 30, "cpu", "w") == "ok" and store.finish(finished, "w", "succeeded")
    assert store.cancel(cancelled) == "cancelled"
    assert store.queue_failed(unsent, "could not send")
    deletion = Deletion(client, store, tmp_path / "models")
    assert deletion.delete(deleted)
    assert store.claim(running_deleted, "w", 30, "cpu", "w") == "ok"
    assert deletion.delete(running_deleted)  # a running job: its worker loses the lease
    assert store.claim(refused, "w", 30, "cpu", "w") == "ok" and store.finish(refused, "w", "failed", "bad")
    assert q.counts() == {} and q.job_ids() == []
    # Exactly once: ending a job again, or its worker's late writes, change nothing.
    assert not store.finish(finished, "w", "failed") and store.cancel(cancelled) == "finished"
    assert not store.queue_failed(unsent, "again") and not deletion.delete(deleted)
    assert q.counts() == {}
    assert client.hget(job_key(finished), "quota_tags") is None


def test_a_job_whose_worker_was_lost_still_counts_until_it_ends(store: JobStore, client: redis.Redis) -> None:
    q = quota(client, per_owner=1)
    job_id = submit(store, q)
    assert store.claim(job_id, "gone", 0.05, "cpu", "w") == "ok"
    time.sleep(0.1)
    assert store.recover_orphans() == [job_id]
    assert q.counts()["o:alice"] == 1
    with pytest.raises(QuotaExceeded, match="active-jobs quota: you already have 1 queued or running jobs"):
        q.reserve("10.0.0.1", time.time(), "alice")
    assert store.claim(job_id, "next", 30, "cpu", "w") == "ok" and store.finish(job_id, "next", "succeeded")
    assert q.counts() == {}
    q.settle(q.reserve("10.0.0.1", time.time(), "alice"), None)  # free again; a refused upload gives it back
    assert client.keys(PENDING_PREFIX + "*") == [] and q.counts() == {}


def test_a_reservation_expires_and_a_job_ended_before_its_settle_is_not_counted(store: JobStore,
                                                                                client: redis.Redis) -> None:
    q = quota(client, total=1)
    q.reserve("10.0.0.1", time.time() - 1000, "alice")  # an upload that never finished (its API process died)
    q.reserve("10.0.0.1", time.time(), "alice")  # the expired reservation no longer counts
    with pytest.raises(QuotaExceeded, match="the server already has 1 queued or running jobs"):
        q.reserve("10.0.0.2", time.time(), "bob")
    client.flushdb()
    reservation = q.reserve("10.0.0.1", time.time(), "alice")
    job_id = new_job_id()
    store.create(job_id, JobSpec.from_options({"name": "q", "experiment": "growing", "iterations": 10}),
                 torch.rand(4, 8, 8))
    assert store.cancel(job_id) == "cancelled"  # ended before the API settled its slot: nothing to release then
    q.settle(reservation, job_id)
    assert q.counts() == {} and q.job_ids() == []


def test_the_counters_are_rebuilt_once_from_the_previous_versions_set(store: JobStore, client: redis.Redis) -> None:
    queued, running, done = (new_job_id() for _ in range(3))
    for job_id in (queued, running, done):
        store.create(job_id, JobSpec.from_options({"name": "old", "experiment": "growing", "iterations": 10}),
                     torch.rand(4, 8, 8))
    assert store.claim(running, "w", 30, "cpu", "w") == "ok"
    assert store.claim(done, "w", 30, "cpu", "w") == "ok" and store.finish(done, "w", "succeeded")
    # What the previous version's _RESERVE and settle kept: jobs at LEGACY_JOB_SCORE, a pending reservation.
    client.zadd(LEGACY_ACTIVE_KEY, {queued: LEGACY_JOB_SCORE, running: LEGACY_JOB_SCORE, done: LEGACY_JOB_SCORE,
                                    "reservation:x": time.time() + 60})
    client.hset(LEGACY_OWNER_KEY, mapping={queued: "|a:10.0.0.1|o:alice|", running: "|a:10.0.0.2|o:alice|",
                                           done: "|a:10.0.0.1|o:alice|", "reservation:x": "|a:10.0.0.3|"})
    q = quota(client, per_owner=3)
    q.reserve("10.0.0.9", time.time(), "bob")  # the first reservation of a process rebuilds them first
    assert q.counts() == {"total": 2, "a:10.0.0.1": 1, "a:10.0.0.2": 1, "o:alice": 2}
    assert not client.exists(LEGACY_ACTIVE_KEY) and not client.exists(LEGACY_OWNER_KEY)
    assert quota(client).upgrade() == 0 and q.counts()["total"] == 2  # idempotent
    assert store.finish(running, "w", "succeeded") and store.cancel(queued) == "cancelled"
    assert q.counts() == {}


def test_the_check_is_a_few_commands_however_many_jobs_are_active(store: JobStore, client: redis.Redis) -> None:
    q = quota(client, total=10_000, per_client=10_000, per_owner=10_000)
    for i in range(200):
        q.settle(Reservation(f"r{i}", "|a:10.0.0.1|o:alice|"), None)
        submit(store, q)
    client.config_resetstat()
    q.settle(q.reserve("10.0.0.1", time.time(), "alice"), None)
    calls = {name: stats["calls"] for name, stats in client.info("commandstats").items()}
    assert calls.get("cmdstat_hget", 0) <= 3 and "cmdstat_zrange" not in calls, calls  # no walk over the jobs
    assert keys.QUOTA_COUNTS.pattern == COUNTS_KEY and client.zcard(JOBS_KEY) == 200


def test_the_api_start_rebuilds_the_counters(client: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    """What the API's lifespan runs (backend.api.main.migrate), on a Redis written by the previous version."""
    from backend.api.main import migrate
    from backend.config import Settings
    from backend.storage.shared import Storage

    storage = Storage.connect(Settings(redis_url=redis_url, models_dir=tmp_path, artifacts=str(tmp_path / "a")))
    job_id = new_job_id()
    storage.jobs.create(job_id, JobSpec.from_options({"name": "old", "experiment": "growing", "iterations": 10}),
                        torch.rand(4, 8, 8))
    client.zadd(LEGACY_ACTIVE_KEY, {job_id: LEGACY_JOB_SCORE})
    client.hset(LEGACY_OWNER_KEY, job_id, "|a:10.0.0.1|o:alice|")
    migrate(storage)
    assert storage.quota.counts() == {"total": 1, "a:10.0.0.1": 1, "o:alice": 1}
    assert storage.quota.job_ids() == [job_id] and not client.exists(LEGACY_ACTIVE_KEY)
