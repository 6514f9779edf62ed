"""The optional access token and the active-job caps, against the real app and a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.api.security import RETRY_AFTER_SECONDS
from backend.config import Settings
from backend.storage.jobs import JobStore
from backend.storage.quota import COUNTS_KEY, JOBS_KEY, PENDING_PREFIX
from tests.conftest import TINY_TRAINING, png_image

TOKEN = "s3cret-token"


def settings(redis_url: str, models_dir: Path, **overrides: object) -> Settings:
    return Settings(redis_url=redis_url, models_dir=models_dir, **overrides)


def upload(client: TestClient, **headers: str):
    fields = {k: str(v) for k, v in {**TINY_TRAINING, "iterations": 10}.items()}
    return client.post("/api/jobs", files={"image": ("square.png", png_image(), "image/png")}, data=fields,
                       headers=headers)


@pytest.fixture
def locked(redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    redis.Redis.from_url(redis_url).flushdb()
    with TestClient(create_app(settings(redis_url, tmp_path, access_token=TOKEN))) as client:
        yield client


def test_open_server_needs_no_token(redis_url: str, tmp_path: Path) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    with TestClient(create_app(settings(redis_url, tmp_path))) as client:
        assert client.get("/api/config").json()["auth_required"] is False
        job = upload(client)
        assert job.status_code == 202, job.text
        assert client.post(f"/api/jobs/{job.json()['id']}/cancel").status_code == 200


def test_token_guards_create_and_cancel_only(locked: TestClient) -> None:
    assert locked.get("/api/config").json()["auth_required"] is True
    missing = upload(locked)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer <token>" in missing.json()["detail"]
    wrong = upload(locked, Authorization="Bearer nope")
    assert wrong.status_code == 401 and "not valid" in wrong.json()["detail"]
    assert upload(locked, Authorization="Basic " + TOKEN).status_code == 401

    job = upload(locked, Authorization=f"Bearer {TOKEN}")
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    # Reads stay open: the id is the secret.
    assert locked.get(f"/api/jobs/{job_id}").status_code == 200
    assert locked.get(f"/api/jobs/{job_id}/target.png").status_code == 200
    assert locked.get("/api/models").status_code == 200
    assert locked.post(f"/api/jobs/{job_id}/cancel").status_code == 401
    assert locked.get(f"/api/jobs/{job_id}").json()["status"] == "queued"  # the refused cancel did nothing
    assert locked.post(f"/api/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert locked.get(f"/api/jobs/{job_id}").json()["status"] == "cancelled"


def test_a_refused_request_stores_nothing(locked: TestClient) -> None:
    assert upload(locked).status_code == 401
    assert locked.get("/api/jobs").json()["total"] == 0


def test_active_job_caps_per_client_and_overall(redis_url: str, tmp_path: Path) -> None:
    client_redis = redis.Redis.from_url(redis_url)
    client_redis.flushdb()
    app = create_app(settings(redis_url, tmp_path, max_active_jobs=3, max_active_jobs_per_client=2))
    alice = TestClient(app, client=("10.0.0.1", 5000))
    bob = TestClient(app, client=("10.0.0.2", 5000))
    carol = TestClient(app, client=("10.0.0.3", 5000))

    first, second = upload(alice), upload(alice)
    assert first.status_code == second.status_code == 202
    third = upload(alice)
    assert third.status_code == 429
    assert third.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert "your address already has 2 queued or running jobs (at most 2" in third.json()["detail"]

    assert upload(bob).status_code == 202  # another client has its own share...
    full = upload(carol)  # ...until the server is full
    assert full.status_code == 429 and "at most 3" in full.json()["detail"] and full.headers["retry-after"]
    assert alice.get("/api/jobs").json()["total"] == 2  # her own; refused uploads were never stored

    # A finished job frees its slot (here: cancelled while queued).
    assert alice.post(f"/api/jobs/{first.json()['id']}/cancel").status_code == 200
    assert upload(carol).status_code == 202
    assert upload(alice).status_code == 429  # the server is full again

    # A bad upload gives its reserved slot back.
    store = JobStore(client_redis)  # a worker takes the second job and it fails
    assert store.claim(second.json()["id"], "w", 30, "cpu", "worker") == "ok"
    assert store.finish(second.json()["id"], "w", "failed", "for the test")
    bad = alice.post("/api/jobs", files={"image": ("x.png", b"not an image", "image/png")})
    assert bad.status_code == 422
    assert client_redis.zcard(JOBS_KEY) == 2  # bob's and carol's jobs; no leftover reservation
    assert int(client_redis.hget(COUNTS_KEY, "total")) == 2 and client_redis.keys(PENDING_PREFIX + "*") == []


def test_quota_is_not_bypassed_by_a_made_up_token(redis_url: str, tmp_path: Path) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    with TestClient(create_app(settings(redis_url, tmp_path, max_active_jobs_per_client=1))) as client:
        assert upload(client, Authorization="Bearer a").status_code == 202
        assert upload(client, Authorization="Bearer b").status_code == 429


def test_upload_pixel_and_iteration_caps(redis_url: str, tmp_path: Path) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    with TestClient(create_app(settings(redis_url, tmp_path, max_upload_bytes=2000, max_iterations=50))) as client:
        too_big = client.post("/api/jobs", files={"image": ("big.png", b"\x89PNG" + b"0" * 5000, "image/png")})
        assert too_big.status_code == 413 and "2,000 bytes" in too_big.json()["detail"]
        many = client.post("/api/jobs", files={"image": ("s.png", png_image(), "image/png")},
                           data={"iterations": "51"})
        assert many.status_code == 422 and "at most 50 iterations" in many.json()["detail"]
        assert client.get("/api/config").json()["max_iterations"] == 50
    with TestClient(create_app(settings(redis_url, tmp_path, max_image_pixels=1000))) as client:
        bomb = client.post("/api/jobs", files={"image": ("b.png", png_image((40, 40)), "image/png")})
        assert bomb.status_code == 422 and "at most 1,000 pixels" in bomb.json()["detail"]
        assert client.get("/api/jobs").json()["total"] == 0
