"""The API app in-process (TestClient), against the module's own Redis database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.config import Settings


@pytest.fixture(scope="module")
def api_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-models")


@pytest.fixture(scope="module")
def client(redis_url: str, api_models_dir: Path) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, models_dir=api_models_dir, max_upload_bytes=200_000,
                        max_iterations=5000, checkpoint_every=25)
    with TestClient(create_app(settings)) as test_client:
        yield test_client
