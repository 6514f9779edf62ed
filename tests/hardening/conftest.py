"""Real services for the hardening tests: stream services on chosen ports (restartable), a tiny model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from backend.nca import modelfile
from backend.nca.model import NCA
from backend.nca.modelfile import ModelFile, ModelInfo
from backend.storage.embedded_redis import EmbeddedRedis, free_port
from tests.stream.conftest import random_model

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "example-random"
STILL_MODEL, STILL_SIZE = "example-still", 128


@dataclass
class Service:
    """A uvicorn subprocess (the contract command) on a port of our choosing, so it can be restarted there."""

    app: str
    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Service:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=REPO_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.app} exited early:\n{self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.app} did not listen within {timeout:.0f} s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def url(self, model: str = MODEL, **params: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"model": model, **params}.items())
        return f"ws://127.0.0.1:{self.port}/ws/stream?{query}"

    def health(self) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5).json()


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
