"""Faults with a real Redis, real Celery workers and the real API: nothing a user started is lost.

The worker killed with SIGKILL mid-training (resume from the checkpoint) is tests/worker/test_resume.py.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.config import Settings
from backend.nca.modelfile import from_bytes
from backend.storage.embedded_redis import EmbeddedRedis, free_port, start_redis
from tests.conftest import S3_KEYS, SERVICE_ENV, TINY_TRAINING, Worker, png_image, wait_for

# Smaller still than TINY_TRAINING: each job is a fraction of a second of training.
TINY_JOB = {**TINY_TRAINING, "min_steps": 8, "max_steps": 12, "checkpoint_every": 10}
LEASE_SECONDS = float(SERVICE_ENV["NCA_LEASE_SECONDS"])  # the test workers'


def api(redis_url: str, models_dir: Path) -> TestClient:
    settings = Settings(redis_url=redis_url, models_dir=models_dir, max_active_jobs_per_client=100,
                        max_active_jobs_per_owner=100)
    return TestClient(create_app(settings))


def submit(client: TestClient, **options: object) -> dict:
    fields = {k: str(v) for k, v in {**TINY_JOB, **options}.items()}
    response = client.post("/api/jobs", files={"image": ("square.png", png_image(), "image/png")}, data=fields)
    assert response.status_code == 202, response.text
    return response.json()


def wait_job(client: TestClient, job_id: str, condition: Callable[[dict], bool], timeout: float = 90.0,
             what: str = "") -> dict:
    def check() -> dict | None:
        response = client.get(f"/api/jobs/{job_id}")
        if response.status_code != 200:
            return None
        job = response.json()
        assert job["status"] != "failed", job["error"]
        return job if condition(job) else None

    return wait_for(check, timeout=timeout, interval=0.1, what=what)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own (it gets restarted), append-only so its data survives a restart."""
    server = start_redis(port=free_port(), data_dir=tmp_path / "redis", appendonly=True)
    yield server
    server.stop()


def test_redis_restart_mid_training(own_redis: EmbeddedRedis, start_worker, tmp_path: Path) -> None:
    client = api(own_redis.url, tmp_path / "api-models")
    worker = start_worker(own_redis.url, tmp_path / "worker-models")
    finished = submit(client, iterations=20)
    wait_job(client, finished["id"], lambda j: j["status"] == "succeeded", what="the first job")
    job = submit(client, iterations=800)
    wait_job(client, job["id"], lambda j: (j["checkpoint_iteration"] or 0) >= 40, what="two checkpoints")

    own_redis.stop()  # graceful: the append-only file is complete
    down = time.monotonic()
    outage = client.get(f"/api/jobs/{job['id']}")
    assert outage.status_code == 503 and "Redis" in outage.json()["detail"]
    assert client.get("/api/health").status_code == 503
    assert client.post("/api/jobs", files={"image": ("s.png", png_image(), "image/png")}).status_code == 503
    time.sleep(LEASE_SECONDS + 1.0)  # longer than the lease: every lease in Redis expires meanwhile
    restarted = start_redis(port=own_redis.port, data_dir=own_redis.data_dir, appendonly=True)
    own_redis.process = restarted.process  # the fixture stops this one
    outage_seconds = time.monotonic() - down

    recovered = wait_for(lambda: client.get("/api/health").status_code == 200, timeout=20, what="API recovery")
    assert recovered
    done = wait_job(client, job["id"], lambda j: j["status"] == "succeeded", timeout=120,
                    what="the job to finish after the restart")
    assert done["iteration"] == 800 and done["checkpoint_iteration"] == 800
    # Its worker trained on through the outage and took its lease back: not a lost worker (20 such
    # outages used to fail a healthy job), not even a restart from the checkpoint.
    assert (done["workers_lost"], done["attempts"], done["resumed_from"]) == (0, 1, []), done
    assert "lease lost" not in worker.log_path.read_text()
    assert from_bytes(client.get(done["links"]["model_file"]).content).info.iterations == 800
    jobs = client.get("/api/jobs").json()
    assert jobs["total"] == 2 and {j["id"] for j in jobs["items"]} == {finished["id"], job["id"]}
    before = client.get(f"/api/jobs/{finished['id']}").json()
    assert before["status"] == "succeeded" and client.get(before["links"]["model_file"]).status_code == 200
    worker.stop()
    print(f"Redis down {outage_seconds:.1f} s (lease {LEASE_SECONDS:g} s); attempts {done['attempts']}, "
          f"workers lost {done['workers_lost']}")


def test_twenty_jobs_on_one_worker_run_in_order_once_each(redis_url: str, start_worker, tmp_path: Path) -> None:
    client = api(redis_url, tmp_path / "api-models")
    worker = start_worker(redis_url, tmp_path / "worker-models")
    try:
        ids = [submit(client, iterations=10, name=f"job {i}")["id"] for i in range(20)]
        start = time.monotonic()
        jobs = [wait_job(client, job_id, lambda j: j["status"] == "succeeded", timeout=120) for job_id in ids]
        elapsed = time.monotonic() - start
    finally:
        worker.stop()  # the next test needs a worker of its own on this database
    assert client.get("/api/jobs", params={"limit": 100}).json()["total"] == 20
    assert [j["iteration"] for j in jobs] == [10] * 20
    assert all(j["attempts"] == 1 and j["resumed_from"] == [] for j in jobs), "a job was started twice"
    for earlier, later in zip(jobs, jobs[1:], strict=False):
        assert earlier["started_at"] <= later["started_at"], "jobs ran out of order"
        assert earlier["finished_at"] <= later["started_at"], "two jobs ran at the same time on one worker"
    print(f"20 jobs in {elapsed:.1f} s")


def test_unwritable_models_dir_is_a_clear_warning_not_a_hang(redis_url: str, start_worker: Callable[..., Worker],
                                                            tmp_path: Path) -> None:
    """The export to models/jobs/ is a local copy; Redis holds the model. Its failure is recorded, the job succeeds."""
    client = api(redis_url, tmp_path / "api-models")
    worker_models = tmp_path / "worker-models"
    worker_models.mkdir()
    (worker_models / "jobs").write_text("a file where the export folder should be")  # mkdir fails: not writable
    worker = start_worker(redis_url, worker_models)
    try:
        job = submit(client, iterations=20)
        done = wait_job(client, job["id"], lambda j: j["status"] in ("succeeded", "failed"), timeout=60)
    finally:
        worker.stop()
    assert done["status"] == "succeeded" and done["error"] is None
    assert "the model could not be saved to" in done["warning"] and "safe in Redis" in done["warning"]
    assert f"/api/models/{job['id']}/file" in done["warning"]
    assert from_bytes(client.get(done["links"]["model_file"]).content).info.iterations == 20


@contextlib.contextmanager
def file_size_limit(max_bytes: int) -> Iterator[None]:
    """Children started inside inherit RLIMIT_FSIZE: writing past it fails with EFBIG, as on a full disk.

    (Python ignores SIGXFSZ, so the write raises OSError instead of killing the process.)
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_full_disk_on_the_worker_is_a_clear_warning_not_a_hang(redis_url: str, tmp_path: Path, s3_server: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's own disk is full; the artifact store is elsewhere (S3), as on a deployment."""
    monkeypatch.setenv("NCA_ARTIFACTS", "s3://nca-full-disk/artifacts")
    monkeypatch.setenv("NCA_S3_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("NCA_S3_ACCESS_KEY_ID", S3_KEYS[0])
    monkeypatch.setenv("NCA_S3_SECRET_ACCESS_KEY", S3_KEYS[1])
    monkeypatch.setenv("NCA_S3_CREATE_BUCKET", "1")
    client = api(redis_url, tmp_path / "api-models")
    with file_size_limit(48 * 1024):  # the worker's log fits, a model file (about 100 kB) does not
        worker = Worker(redis_url, tmp_path / "worker-models", tmp_path / "full-disk-worker.log")
    try:
        worker.wait_ready()
        job = submit(client, iterations=20)
        done = wait_job(client, job["id"], lambda j: j["status"] in ("succeeded", "failed"), timeout=60)
    finally:
        worker.stop()
    assert done["status"] == "succeeded" and "File too large" in done["warning"], done["warning"]
    assert from_bytes(client.get(done["links"]["model_file"]).content).info.iterations == 20
    assert not list((tmp_path / "worker-models" / "jobs").glob("*"))  # no partial file left behind
