"""Real services for the hardening tests: stream services on chosen ports (restartable), a tiny model."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backend.nca import modelfile
from backend.nca.model import NCA
from backend.nca.modelfile import ModelFile, ModelInfo
from backend.storage.embedded_redis import EmbeddedRedis, free_port
from tests.helpers import UvicornServer
from tests.stream.conftest import random_model

MODEL = "example-random"
STILL_MODEL, STILL_SIZE = "example-still", 128


class Service(UvicornServer):
    """A stream service; `url()` defaults to the random model."""

    def url(self, model: str = MODEL, **params: object) -> str:
        return super().url(model, **params)


@pytest.fixture(scope="session")
def stream_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hardening-models")
    modelfile.save(random_model(0), path / "random.safetensors")
    # An untrained rule (it does nothing): big frames for almost no compute, for memory measurements.
    modelfile.save(ModelFile(NCA(), ModelInfo(grid_height=STILL_SIZE, grid_width=STILL_SIZE, name="still")),
                   path / "still.safetensors")
    return path


@pytest.fixture(scope="module")
def stream_service(stream_models_dir: Path, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Callable[..., Service]]:
    """`stream_service(**settings)` -> a started stream service; all are stopped after the module."""
    started: list[Service] = []
    logs = tmp_path_factory.mktemp("hardening-stream")

    def start(port: int | None = None, **settings: object) -> Service:
        env = {**os.environ, "REDIS_URL": redis_server.url, "NCA_MODELS_DIR": str(stream_models_dir),
               "NCA_DEVICE": "cpu", "NCA_STREAM_TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1",
               **{f"NCA_{k.upper()}": str(v) for k, v in settings.items()}}
        service = Service("backend.stream.app:app", port or free_port(), env, logs / f"stream{len(started)}.log")
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()
