"""Fixtures for the stream service: real uvicorn subprocesses on free ports, real Redis, a temp models dir.

Models: a Distill regenerating lizard (grows and regrows; only when ../shared is present) and a
small random-weight model that needs nothing from outside the repo (its frames change every step).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from backend.nca import modelfile
from backend.nca.model import NCA
from backend.nca.modelfile import ModelFile, ModelInfo
from backend.storage.embedded_redis import EmbeddedRedis, free_port
from tests.helpers import REPO_ROOT, UvicornServer

DISTILL_LIZARD = REPO_ROOT.parent / "shared" / "reference" / "distill-webgl-models" / "regenerating_lizard.json"
LIZARD = "example-lizard"
RANDOM = "example-random"  # 40 wide, 48 high: checks that the grid comes from the file


def random_model(seed: int, height: int = 48, width: int = 40, iterations: int = 0) -> ModelFile:
    """An NCA whose last layer is not zero, so every step changes the state (nothing to learn here)."""
    torch.manual_seed(seed)
    net = NCA()
    with torch.no_grad():
        net.hidden_to_update.weight.normal_(0.0, 0.02)
    return ModelFile(net, ModelInfo(grid_height=height, grid_width=width, iterations=iterations, name=f"random{seed}"))


StreamServer = UvicornServer  # running `backend.stream.app:app`


def _start(models_dir: Path, redis: EmbeddedRedis, log: Path, env: dict[str, str] | None = None,
           **settings: object) -> StreamServer:
    """`settings` become NCA_* variables; `env` adds others (e.g. UVICORN_WS)."""
    env = {**os.environ, "REDIS_URL": redis.url, "NCA_MODELS_DIR": str(models_dir), "NCA_DEVICE": "cpu",
           "PYTHONUNBUFFERED": "1", **(env or {}), **{f"NCA_{k.upper()}": str(v) for k, v in settings.items()}}
    return StreamServer("backend.stream.app:app", free_port(), env, log).start()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream-models")
    modelfile.save(random_model(0), path / "random.safetensors")
    if DISTILL_LIZARD.exists():
        from backend.nca.distill import import_distill

        modelfile.save(import_distill(DISTILL_LIZARD), path / "lizard.safetensors")
    return path


@pytest.fixture
def lizard() -> str:
    if not DISTILL_LIZARD.exists():
        pytest.skip(f"needs the Distill regenerating lizard at {DISTILL_LIZARD} (../shared is absent)")
    return LIZARD


@pytest.fixture(scope="session")
def server(models_dir: Path, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[StreamServer]:
    """The stream service with a short stall timeout, so slow-client tests finish quickly."""
    srv = _start(models_dir, redis_server, tmp_path_factory.mktemp("stream") / "stream.log",
                 stream_stall_timeout=2, stream_max_sessions=16)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def limited_server(models_dir: Path, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[StreamServer]:
    """A second service with tiny limits: 2 streams, 1.5 s idle timeout."""
    srv = _start(models_dir, redis_server, tmp_path_factory.mktemp("stream-limited") / "stream.log",
                 stream_max_sessions=2, stream_idle_timeout=1.5)
    yield srv
    srv.stop()
