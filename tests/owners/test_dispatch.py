"""Fair dispatch, deletion of a running job, and the exported file, with a real Celery worker.

One worker, two owners: A queues 5 jobs, then B one; B's job is the second to start (round-robin
across owners, not first-in-first-out). A job whose worker was killed resumes before the jobs that
have not started. Deleting a running job stops its worker and leaves nothing of it behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.config import Settings
from tests.conftest import TINY_TRAINING, Worker, png_image, wait_for
from tests.owners.conftest import ADMIN

OPERATOR = {"X-Owner-Token": ADMIN}


@pytest.fixture(scope="module")
def worker_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dispatch-models")


@pytest.fixture(scope="module")
def api(redis_url: str, worker_models_dir: Path):
    # The API and the worker share the models folder here (one machine): deletion removes the exported file.
    return create_app(Settings(redis_url=redis_url, models_dir=worker_models_dir, admin_token=ADMIN))


@pytest.fixture
def workers(redis_url: str, worker_models_dir: Path,
            start_worker: Callable[..., Worker]) -> Iterator[Callable[[], Worker]]:
    """`workers()` starts a worker on an emptied database; every one is stopped when the test ends."""
    redis.Redis.from_url(redis_url).flushdb()
    started: list[Worker] = []

    def start() -> Worker:
        started.append(start_worker(redis_url, worker_models_dir))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def submit(client: TestClient, iterations: int, name: str) -> str:
    fields = {k: str(v) for k, v in {**TINY_TRAINING, "iterations": iterations, "name": name}.items()}
    created = client.post("/api/jobs", files={"image": ("s.png", png_image(), "image/png")}, data=fields)
    assert created.status_code == 202, created.text
    return created.json()["id"]


def all_jobs(client: TestClient) -> list[dict]:
    return client.get("/api/jobs", params={"limit": 100}, headers=OPERATOR).json()["items"]


def test_one_owner_with_many_jobs_delays_another_by_at_most_one(api, workers: Callable[[], Worker]) -> None:
    workers()
    with TestClient(api, client=("10.8.0.1", 1)) as a, TestClient(api, client=("10.8.0.2", 1)) as b:
        began = time.monotonic()
        a_jobs = [submit(a, 40, f"a{i}") for i in range(5)]
        b_job = submit(b, 40, "b")
        submitted = time.monotonic() - began

        def done() -> list[dict] | None:
            jobs = all_jobs(a)
            assert not any(j["status"] == "failed" for j in jobs), jobs
            return jobs if all(j["status"] == "succeeded" for j in jobs) else None

        jobs = wait_for(done, timeout=300, interval=0.5, what="every job to finish")
    order = [j["id"] for j in sorted(jobs, key=lambda j: j["started_at"])]
    assert order[0] == a_jobs[0], "A's first job started at once"
    assert order[1] == b_job, f"B's job was number {order.index(b_job) + 1} to start, not the second"
    assert order[2:] == a_jobs[1:], "A's own jobs in the order A sent them"
    by_id = {j["id"]: j for j in jobs}
    waited = by_id[b_job]["started_at"] - by_id[b_job]["created_at"]
    print(f"\nfairness: 6 jobs submitted in {submitted:.1f} s; B's job waited {waited:.1f} s, started 2nd of 6")


def test_a_job_whose_worker_was_lost_resumes_ahead_of_new_ones(api, workers: Callable[[], Worker]) -> None:
    first = workers()
    with TestClient(api, client=("10.8.1.1", 1)) as a, TestClient(api, client=("10.8.1.2", 1)) as b:
        long_job = submit(a, 20_000, "long")  # checkpoints every 20 iterations (TINY_TRAINING)
        wait_for(lambda: (a.get(f"/api/jobs/{long_job}").json()["checkpoint_iteration"] or 0) >= 20, timeout=120,
                 what="the long job's first checkpoint")
        waiting = [submit(b, 20, f"b{i}") for i in range(2)] + [submit(a, 20, "a-new")]
        first.kill9()  # the long job's worker is lost; three jobs wait behind it
        workers()

        def first_running() -> str | None:
            running = [j for j in all_jobs(a) if j["status"] in ("running", "succeeded")]
            return running[0]["id"] if running else None

        assert wait_for(first_running, timeout=120, interval=0.05, what="a job to start") == long_job
        resumed = a.get(f"/api/jobs/{long_job}").json()
        assert resumed["interrupted_by"] == "worker_lost" and resumed["resumed_from"], resumed
        assert all(a.get(f"/api/jobs/{j}", headers=OPERATOR).json()["status"] == "queued" for j in waiting)
        assert a.delete(f"/api/jobs/{long_job}").status_code == 204  # deleting a running job stops its worker
        wait_for(lambda: all(b.get(f"/api/jobs/{j}").json()["status"] == "succeeded" for j in waiting[:2]),
                 timeout=120, what="the waiting jobs to run after it")


def test_deleting_a_running_job_stops_it_and_leaves_nothing(api, redis_url: str, worker_models_dir: Path,
                                                            workers: Callable[[], Worker]) -> None:
    client_redis = redis.Redis.from_url(redis_url)
    workers()
    with TestClient(api, client=("10.8.2.1", 1)) as a:
        finished = submit(a, 20, "finished")
        wait_for(lambda: a.get(f"/api/jobs/{finished}").json()["status"] == "succeeded", timeout=120,
                 what="the short job")
        exported = worker_models_dir / "jobs" / f"{finished}.safetensors"
        assert exported.exists(), "the worker exports a finished model"
        running = submit(a, 20_000, "running")
        wait_for(lambda: (a.get(f"/api/jobs/{running}").json()["checkpoint_iteration"] or 0) >= 20, timeout=120,
                 what="a checkpoint")
        assert a.delete(f"/api/jobs/{running}").status_code == 204
        assert a.delete(f"/api/jobs/{finished}").status_code == 204
        assert not exported.exists()
        time.sleep(3)  # the worker notices at its next write, and must not bring anything back
        leftovers = [k.decode() for k in client_redis.scan_iter() if running.encode() in k or finished.encode() in k]
        assert leftovers == []
        assert not (worker_models_dir / "jobs" / f"{running}.safetensors").exists()
        health = a.get("/api/health").json()
        assert all(w["job"] is None for w in health["workers"]), health
