"""Two owners (separate cookie jars) against one API app in-process, on the module's own Redis database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.config import Settings
from tests.conftest import TINY_TRAINING, png_image

ADMIN = "operator-token-for-tests"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("owners-models")


@pytest.fixture(scope="module")
def app_factory(redis_url: str, models_dir: Path) -> Callable[..., object]:
    def make(**overrides: object):
        settings = Settings(redis_url=redis_url, models_dir=models_dir, max_upload_bytes=200_000,
                            max_iterations=5000, checkpoint_every=25, admin_token=ADMIN, **overrides)
        return create_app(settings)

    return make


@pytest.fixture(scope="module")
def app(app_factory: Callable[..., object]):
    return app_factory()


@pytest.fixture
def browser(app) -> Iterator[Callable[..., TestClient]]:
    """`browser(address)` -> a TestClient with its own cookie jar (a browser), from that address."""
    opened: list[TestClient] = []

    def open_one(address: str = "10.1.0.1") -> TestClient:
        client = TestClient(app, client=(address, 5000))
        client.__enter__()
        opened.append(client)
        return client

    yield open_one
    for client in opened:
        client.__exit__(None, None, None)


def upload(client: TestClient, iterations: int = 10, **headers: str):
    fields = {k: str(v) for k, v in {**TINY_TRAINING, "iterations": iterations}.items()}
    return client.post("/api/jobs", files={"image": ("square.png", png_image(), "image/png")}, data=fields,
                       headers=headers)
