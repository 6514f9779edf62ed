"""Fixtures for the browser tests: the whole real stack in subprocesses, and Debian's chromium.

The stack is one session-wide set of real services on free ports: its own redis-server, a Celery
worker, the API (which serves the frontend) and the stream service, sharing a temporary models
directory that holds a Distill regenerating model as a shipped example.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.storage.embedded_redis import EmbeddedRedis, free_port, start_redis
from tests.frontend.pages import DESKTOP, SCREENSHOTS

REPO_ROOT = Path(__file__).resolve().parents[2]
DISTILL_MODELS = REPO_ROOT.parent / "shared" / "reference" / "distill-webgl-models"
EXAMPLE_STEM = "regenerating_lizard"  # the Distill demo's regenerating lizard: grows and regrows
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT = 60.0


@dataclass
class Stack:
    api_url: str
    stream_port: int
    models_dir: Path
    redis: EmbeddedRedis
    example_id: str | None  # the imported Distill model, None when ../shared is absent


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[2:5]} exited early:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _wait_for_worker(worker: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    """The worker is ready once its log says so (Celery prints 'ready.' when it consumes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the Celery worker exited early:\n{log.read_text()[-3000:]}")
        if " ready." in log.read_text():
            return
        time.sleep(0.3)
    raise RuntimeError(f"the Celery worker is not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _import_example(models_dir: Path) -> str | None:
    source = DISTILL_MODELS / f"{EXAMPLE_STEM}.json"
    if not source.exists():
        return None
    from backend.nca import modelfile
    from backend.nca.distill import import_distill

    model = import_distill(source)
    modelfile.save(model, models_dir / f"{EXAMPLE_STEM}.safetensors")
    return f"example-{EXAMPLE_STEM}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, worker, API and stream as real processes; everything stops when the session ends."""
    root = tmp_path_factory.mktemp("frontend-stack")
    models_dir = root / "models"
    models_dir.mkdir()
    example_id = _import_example(models_dir)
    redis = start_redis(data_dir=root / "redis")
    api_port, stream_port = free_port(), free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis.url,
        "NCA_MODELS_DIR": str(models_dir),
        "NCA_STREAM_PORT": str(stream_port),
        "NCA_PUBLIC_STREAM_URL": "",  # the page derives ws://127.0.0.1:<stream port>
        "NCA_CHECKPOINT_EVERY": "10",
        "NCA_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    commands = {
        "stream": [sys.executable, "-m", "uvicorn", "backend.stream.app:app", "--host", "127.0.0.1",
                   "--port", str(stream_port)],
        "api": [sys.executable, "-m", "uvicorn", "backend.api.main:app", "--host", "127.0.0.1",
                "--port", str(api_port)],
        "worker": [sys.executable, "-m", "celery", "-A", "backend.worker.celery_app", "worker", "--pool=solo",
                   "--concurrency=1", "--prefetch-multiplier=1", "--loglevel=INFO", "--hostname", f"fe-{api_port}@%h"],
    }
    processes: dict[str, subprocess.Popen] = {}
    logs = {name: root / f"{name}.log" for name in commands}
    try:
        for name, command in commands.items():
            with logs[name].open("wb") as log:
                processes[name] = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT)
        _wait_for_port(stream_port, processes["stream"], logs["stream"])
        _wait_for_port(api_port, processes["api"], logs["api"])
        api_url = f"http://127.0.0.1:{api_port}"
        _wait_for_worker(processes["worker"], logs["worker"])
        yield Stack(api_url, stream_port, models_dir, redis, example_id)
    finally:
        for process in processes.values():
            process.terminate()
        for name, process in processes.items():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            # Keep the service logs next to the screenshots: they explain a red test.
            SCREENSHOTS.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(logs[name], SCREENSHOTS.parent / f"frontend-{name}.log")
        redis.stop()


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, stack: Stack):
    """A fresh desktop-sized tab on the app; fails the test on any uncaught script error."""
    context = browser.new_context(viewport=DESKTOP, base_url=stack.api_url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(20_000)
    yield page
    context.close()
    assert not errors, f"script errors on the page: {errors}"

