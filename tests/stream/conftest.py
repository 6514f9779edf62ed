"""Fixtures for the stream service: real uvicorn subprocesses on free ports, real Redis, a temp models dir.

Models: a Distill regenerating lizard (grows and regrows; only when ../shared is present) and a
small random-weight model that needs nothing from outside the repo (its frames change every step).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from backend.nca import modelfile
from backend.nca.model import NCA
from backend.nca.modelfile import ModelFile, ModelInfo
from backend.storage.embedded_redis import EmbeddedRedis, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DISTILL_LIZARD = REPO_ROOT.parent / "shared" / "reference" / "distill-webgl-models" / "regenerating_lizard.json"
LIZARD = "example-lizard"
RANDOM = "example-random"  # 40 wide, 48 high: checks that the grid comes from the file
START_TIMEOUT = 60.0


def random_model(seed: int, height: int = 48, width: int = 40, iterations: int = 0) -> ModelFile:
    """An NCA whose last layer is not zero, so every step changes the state (nothing to learn here)."""
    torch.manual_seed(seed)
    net = NCA()
    with torch.no_grad():
        net.hidden_to_update.weight.normal_(0.0, 0.02)
    return ModelFile(net, ModelInfo(grid_height=height, grid_width=width, iterations=iterations, name=f"random{seed}"))


@dataclass
class StreamServer:
    port: int
    process: subprocess.Popen
    log: Path

    def url(self, model: str, **params: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"model": model, **params}.items())
        return f"ws://127.0.0.1:{self.port}/ws/stream?{query}"

    def health(self) -> dict:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5).json()


def _start(models_dir: Path, redis: EmbeddedRedis, log: Path, **settings: object) -> StreamServer:
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis.url, "NCA_MODELS_DIR": str(models_dir), "NCA_DEVICE": "cpu",
           "PYTHONUNBUFFERED": "1", **{f"NCA_{k.upper()}": str(v) for k, v in settings.items()}}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "backend.stream.app:app", "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the stream service exited early:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return StreamServer(port, process, log)
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the stream service did not listen within {START_TIMEOUT:.0f} s") from None
            time.sleep(0.1)


def _stop(server: StreamServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


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
    _stop(srv)


@pytest.fixture(scope="session")
def limited_server(models_dir: Path, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[StreamServer]:
    """A second service with tiny limits: 2 streams, 1.5 s idle timeout."""
    srv = _start(models_dir, redis_server, tmp_path_factory.mktemp("stream-limited") / "stream.log",
                 stream_max_sessions=2, stream_idle_timeout=1.5)
    yield srv
    _stop(srv)
