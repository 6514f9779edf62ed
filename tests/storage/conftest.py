"""Fixtures of the storage tests: an emptied Redis database and a job store on a fresh directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from backend.storage.artifacts import artifact_store
from backend.storage.connection import connect
from backend.storage.jobs import JobStore


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    client = connect(redis_url)
    client.flushdb()
    return client


@pytest.fixture
def store(client: redis.Redis, tmp_path: Path) -> JobStore:
    """A module that tests both artifact backends defines its own, on the parametrised `artifacts`."""
    return JobStore(client, artifacts=artifact_store(str(tmp_path / "artifacts")))
