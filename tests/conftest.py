"""Shared fixtures: real services (Redis, ...) started for the test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.storage.embedded_redis import EmbeddedRedis, start_redis

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
DISTILL_MODELS = SHARED / "reference" / "distill-webgl-models"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedRedis:
    """One real redis-server (the bundled binary) for the whole session, on a free port."""
    server = start_redis(data_dir=tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
