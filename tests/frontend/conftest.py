"""Fixtures for the browser tests: the whole real stack in subprocesses, and Debian's chromium.

The stack is one session-wide set of real services on free ports: its own redis-server, a Celery
worker, the API (which serves the frontend) and the stream service, sharing a temporary models
directory that holds a Distill regenerating model as a shipped example.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from backend.storage.embedded_redis import free_port, start_redis
from tests.conftest import SERVICE_ENV, Worker
from tests.frontend.pages import DESKTOP, PHONE, SCREENSHOTS
from tests.helpers import UvicornServer

REPO_ROOT = Path(__file__).resolve().parents[2]
DISTILL_MODELS = REPO_ROOT.parent / "shared" / "reference" / "distill-webgl-models"
EXAMPLE_STEM = "regenerating_lizard"  # the Distill demo's regenerating lizard: grows and regrows
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


Server = UvicornServer  # restartable on its port, where the page expects it


class OwnerHttp:
    def __init__(self, headers: dict[str, str]):
        self.headers = headers

    def get(self, url: str, **kwargs: object) -> httpx.Response:
        return httpx.get(url, **self._with_owner(kwargs))

    def post(self, url: str, **kwargs: object) -> httpx.Response:
        return httpx.post(url, **self._with_owner(kwargs))

    def _with_owner(self, kwargs: dict) -> dict:
        return {**kwargs, "headers": {**self.headers, **(kwargs.get("headers") or {})}}


def own_browser(context, stack: Stack) -> None:
    """A new owner for this test, shared by its browser context (cookie) and its httpx calls (stack.http)."""
    stack.owner_token = httpx.get(f"{stack.api_url}/api/me", timeout=30).json()["token"]
    context.add_cookies([{"name": "nca_owner", "value": stack.owner_token, "url": stack.api_url,
                          "httpOnly": True, "sameSite": "Lax"}])


@dataclass
class Stack:
    api: Server
    stream: Server
    worker: Worker
    example_id: str | None  # the imported Distill model, None when ../shared is absent
    redis_url: str  # the stack's own Redis, for tests that play a worker's part (tests/stream/jobs.py)
    owner_token: str = ""  # the current test's browser's owner (the page fixture sets it)

    @property
    def http(self) -> OwnerHttp:
        """httpx.get/post as the current test's browser: its jobs are the page's (jobs are private)."""
        return OwnerHttp({"X-Owner-Token": self.owner_token} if self.owner_token else {})

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"

    @property
    def stream_port(self) -> int:
        return self.stream.port


def _import_example(models_dir: Path) -> str | None:
    source = DISTILL_MODELS / f"{EXAMPLE_STEM}.json"
    if not source.exists():
        return None
    from backend.nca import modelfile
    from backend.nca.distill import import_distill

    modelfile.save(import_distill(source), models_dir / f"{EXAMPLE_STEM}.safetensors")
    return f"example-{EXAMPLE_STEM}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, worker, API and stream as real processes; everything stops when the session ends."""
    root = tmp_path_factory.mktemp("frontend-stack")
    models_dir = root / "models"
    models_dir.mkdir()
    example_id = _import_example(models_dir)
    redis = start_redis(data_dir=root / "redis")  # its own server: no other test's worker takes our jobs
    api_port, stream_port = free_port(), free_port()
    env = {
        **os.environ, **SERVICE_ENV,
        "REDIS_URL": redis.url,
        "NCA_MODELS_DIR": str(models_dir),
        # A split deployment (no proxy in front): the page is told where the stream is. Through the proxy
        # the page uses its own origin (tests/deploy/test_proxy.py).
        "NCA_PUBLIC_STREAM_URL": f"ws://127.0.0.1:{stream_port}",
        "NCA_CHECKPOINT_EVERY": "10",
        "NCA_DEVICE": "cpu",
    }
    api = Server("backend.api.main:app", api_port, env, root / "api.log")
    stream = Server("backend.stream.app:app", stream_port, env, root / "stream.log")
    worker = Worker(redis.url, models_dir, root / "worker.log", env)
    try:
        stream.start()
        api.start()
        worker.wait_ready()
        yield Stack(api, stream, worker, example_id, redis.url)
    finally:
        worker.stop()
        api.stop()
        stream.stop()
        redis.stop()
        SCREENSHOTS.parent.mkdir(parents=True, exist_ok=True)
        for log in ("api", "stream", "worker"):  # next to the screenshots: they explain a red test
            shutil.copy(root / f"{log}.log", SCREENSHOTS.parent / f"frontend-{log}.log")


@pytest.fixture(scope="module")
def browser():
    """Module-scoped: Playwright's sync API runs an event loop in this thread while it is open, and
    the asyncio tests that follow (tests/stream, tests/hardening) need the thread free again."""
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
    own_browser(context, stack)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(20_000)
    yield page
    context.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture
def phone(browser, stack: Stack):
    """A fresh phone-sized touch tab on the app."""
    context = browser.new_context(viewport=PHONE, base_url=stack.api_url, device_scale_factor=2,
                                  is_mobile=True, has_touch=True)
    own_browser(context, stack)
    page = context.new_page()
    yield page
    context.close()
