"""A real Celery worker and the API (in-process) sharing only Redis: separate, empty models folders."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.config import Settings
from tests.conftest import TINY_TRAINING, Worker, png_image, wait_for


@pytest.fixture(scope="module")
def api_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-models")


@pytest.fixture(scope="module")
def worker_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-models")


@pytest.fixture(scope="module")
def client(redis_url: str, api_models_dir: Path) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, models_dir=api_models_dir, checkpoint_every=25)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker], redis_url: str, worker_models_dir: Path) -> Worker:
    return start_worker(redis_url, worker_models_dir)


@pytest.fixture(scope="module")
def submit(client: TestClient) -> Callable[..., dict]:
    def submit(**options) -> dict:
        fields = {k: str(v) for k, v in {**TINY_TRAINING, **options}.items()}
        response = client.post("/api/jobs", files={"image": ("square.png", png_image(), "image/png")}, data=fields)
        assert response.status_code == 202, response.text
        return response.json()

    return submit


@pytest.fixture(scope="module")
def job_waiter(client: TestClient) -> Callable[..., dict]:
    def wait(job_id: str, condition: Callable[[dict], bool], timeout: float = 90.0, what: str = "") -> dict:
        def check() -> dict | None:
            job = client.get(f"/api/jobs/{job_id}").json()
            assert job["status"] != "failed", job["error"]
            return job if condition(job) else None

        return wait_for(check, timeout=timeout, interval=0.1, what=what)

    return wait
