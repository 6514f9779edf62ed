"""The API when storage fails, against its own real Redis and artifact store: a full Redis (maxmemory,
noeviction) answers 503 "storage is full" and health says degraded, and everything works again once
memory is freed; a lost or damaged artifact is a 410 naming it, an unreachable store a 503; never a 500."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.config import Settings
from backend.storage.embedded_redis import start_redis
from tests.conftest import TINY_TRAINING, png_image

FILES = {"image": ("a.png", png_image(), "image/png")}
DATA = {k: str(v) for k, v in TINY_TRAINING.items()}


@pytest.fixture
def app_on_own_redis(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """An API on a Redis of its own (the tests change its maxmemory) and an artifact store under tmp_path/art."""
    server = start_redis(data_dir=tmp_path / "redis")

    def client(**settings: object) -> TestClient:
        return TestClient(create_app(Settings(redis_url=server.url, models_dir=tmp_path / "models",
                                              artifacts=str(tmp_path / "art"), **settings)))
    try:
        yield client
    finally:
        server.stop()


def test_a_full_redis_is_503_storage_is_full_then_recovers(app_on_own_redis) -> None:
    with app_on_own_redis() as client:
        job = client.post("/api/jobs", files=FILES, data=DATA)
        assert job.status_code == 202, job.text
        job = job.json()
        health = client.get("/api/health").json()
        assert health["redis"]["maxmemory"] is None and "Redis uses" not in " ".join(health["reasons"])

        redis_client = client.app.state.storage._client
        used = int(redis_client.info("memory")["used_memory"])
        redis_client.config_set("maxmemory-policy", "noeviction")
        redis_client.config_set("maxmemory", int(used * 0.8))  # over it: writes are refused
        response = client.post("/api/jobs", files=FILES, data=DATA)
        assert response.status_code == 503 and response.json()["detail"].startswith("storage is full")
        assert response.headers["retry-after"]
        response = client.post(f"/api/jobs/{job['id']}/cancel")
        assert response.status_code == 503 and "storage is full" in response.json()["detail"]
        health = client.get("/api/health")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert any("maxmemory" in reason for reason in health.json()["reasons"])
        assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "queued"  # nothing stored is lost
        assert client.get(f"/api/jobs/{job['id']}/target.png").status_code == 200

        redis_client.config_set("maxmemory", used * 4)  # memory freed (or added)
        assert client.post("/api/jobs", files=FILES, data=DATA).status_code == 202
        assert "maxmemory" not in " ".join(client.get("/api/health").json()["reasons"])


def test_lost_damaged_or_unreachable_artifacts_are_clear_errors(app_on_own_redis, tmp_path: Path) -> None:
    with app_on_own_redis() as client:
        job = client.post("/api/jobs", files=FILES, data=DATA).json()
        target = tmp_path / "art" / job["id"] / "target"
        target.write_bytes(b"flipped bits")
        response = client.get(f"/api/jobs/{job['id']}/target.png")
        assert response.status_code == 410 and "damaged" in response.json()["detail"]
        target.unlink()
        response = client.get(f"/api/jobs/{job['id']}/target.png")
        assert response.status_code == 410 and "missing" in response.json()["detail"]
        shutil.rmtree(tmp_path / "art")
        (tmp_path / "art").write_bytes(b"")  # the store's volume gone (a file where its folder was; as root,
        response = client.post("/api/jobs", files=FILES, data=DATA)  # a read-only mode would not stop us)
        assert response.status_code == 503 and "artifact store" in response.json()["detail"]
        health = client.get("/api/health").json()
        assert health["status"] == "degraded" and health["artifacts"]["ok"] is False
        assert "the artifact store is unreachable" in health["reasons"]


def test_checkpoint_every_has_a_server_floor(app_on_own_redis) -> None:
    """checkpoint_every=1 wrote a checkpoint on every iteration: refused below NCA_MIN_CHECKPOINT_EVERY."""
    with app_on_own_redis(min_checkpoint_every=10) as client:
        data = {**DATA, "checkpoint_every": "1"}
        response = client.post("/api/jobs", files=FILES, data=data)
        assert response.status_code == 422
        assert "checkpoint_every: at least 10" in response.json()["detail"]
        options = {o["name"]: o for o in client.get("/api/config").json()["options"]}
        assert options["checkpoint_every"]["min"] == 10  # the form's bound says so too
        assert client.post("/api/jobs", files=FILES, data={**data, "checkpoint_every": "10"}).status_code == 202
