"""The stack answers when each compose service runs its own `command` with its own `environment`.

No Docker engine runs here, so this reads docker-compose.yml and starts api, worker and stream natively,
as a host would: the compose file is interpolated with the host variable REDIS_URL (a local Redis, a
database of its own); api and stream then listen on 127.0.0.1 at free ports instead of 0.0.0.0 at their
container ports. Nothing else is changed: the commands, their arguments and every other variable are the
compose file's. The services' own healthcheck commands are run too. Then a tiny job is trained through
the API and the stream plays its model. (The proxy in front of them, with replicas: test_proxy.py.)
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw
from websockets.sync.client import connect as ws_connect

from backend.storage.embedded_redis import EmbeddedRedis, free_port
from tests.conftest import S3_KEYS
from tests.deploy.compose_model import (
    COMPOSE_FILE,
    REPO_ROOT,
    command_argv,
    interpolate,
    load,
    resolved_environment,
    strip_tags,
)
from tests.helpers import stop_process

SERVICES = ("stream", "api", "worker")
STACK_DB = 11  # the session Redis is shared with other tests: this stack uses a database of its own
START_TIMEOUT = 90.0
JOB_TIMEOUT = 180.0
FRAME_HEADER = struct.Struct("<IIHHI")
TINY_JOB = {"experiment": "growing", "iterations": 20, "target_size": 8, "padding": 4, "batch_size": 2,
            "min_steps": 8, "max_steps": 12, "checkpoint_every": 10, "seed": 1}


@dataclass
class Stack:
    compose: dict
    env: dict[str, dict[str, str]]  # each service's environment, as the container would see it
    ports: dict[str, int]  # where api and stream listen here (in compose: their container ports)
    logs: dict[str, Path]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def tail(self, name: str, chars: int = 3000) -> str:
        return f"--- {name} log ---\n{self.logs[name].read_text(errors='replace')[-chars:]}"

    def all_logs(self) -> str:
        return "\n".join(self.tail(name) for name in self.logs)

    def healthcheck(self, name: str, **env_overrides: str) -> subprocess.CompletedProcess:
        """Run the service's compose healthcheck command here (its `python` is this venv's)."""
        test = self.compose["services"][name]["healthcheck"]["test"]
        assert test[0] == "CMD", f"{name}: expected an exec-form healthcheck"
        argv = [sys.executable if arg == "python" else arg for arg in test[1:]]
        if name in self.ports:
            container_port = _container_port(self.compose["services"][name])
            argv = [arg.replace(f"127.0.0.1:{container_port}/", f"127.0.0.1:{self.ports[name]}/") for arg in argv]
        env = {**self.env[name], **env_overrides}
        return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)


def _container_port(service: dict) -> int:
    """The port the service's command listens on in its container (what the proxy and healthcheck use)."""
    argv = command_argv(service)
    return int(argv[argv.index("--port") + 1])


def native_argv(service: dict, port: int | None) -> list[str]:
    """The compose command, listening on loopback at `port`; executables from this venv."""
    argv = command_argv(service)
    bin_dir = Path(sys.executable).parent
    if (bin_dir / argv[0]).exists():
        argv[0] = str(bin_dir / argv[0])
    if port is not None:
        argv[argv.index("--port") + 1] = str(port)
        argv[argv.index("--host") + 1] = "127.0.0.1"
    return argv


def _base_environment() -> dict[str, str]:
    """This machine's environment without any setting of ours, so only the compose file's apply; no PYTHONPATH:
    as in the image, `backend` is importable only because the commands run in the code's folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCA_") and k not in ("REDIS_URL", "PYTHONPATH")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _wait(what: str, check, stack: Stack, timeout: float = START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        for name, process in stack.processes.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited with code {process.returncode} while waiting for {what}\n"
                            f"{stack.all_logs()}")
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{stack.all_logs()}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def stack(redis_server: EmbeddedRedis, s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The compose `s3` service's part is played by the session's `rclone serve s3` (the same server): the
    # services store artifacts in its bucket, which they create at start as in compose.
    host_env = {"REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/{STACK_DB}", "NCA_S3_ENDPOINT_URL": s3_server,
                "NCA_S3_ACCESS_KEY_ID": S3_KEYS[0], "NCA_S3_SECRET_ACCESS_KEY": S3_KEYS[1]}
    compose = interpolate(strip_tags(load(COMPOSE_FILE)), host_env)
    services = compose["services"]
    base = _base_environment()
    logs_dir = tmp_path_factory.mktemp("stack-logs")
    stack = Stack(compose=compose,
                  env={name: {**base, **resolved_environment(services[name])} for name in SERVICES},
                  ports={name: free_port() for name in ("api", "stream")},
                  logs={name: logs_dir / f"{name}.log" for name in SERVICES})
    assert stack.env["worker"]["REDIS_URL"] == host_env["REDIS_URL"]
    try:
        for name in SERVICES:
            with stack.logs[name].open("wb") as log:
                stack.processes[name] = subprocess.Popen(
                    native_argv(services[name], stack.ports.get(name)), cwd=REPO_ROOT, env=stack.env[name],
                    stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT)
        yield stack
    finally:
        for process in stack.processes.values():
            stop_process(process, timeout=30)


def _health(stack: Stack) -> dict:
    response = httpx.get(f"{stack.api}/api/health", timeout=5)
    return response.json() if response.status_code == 200 else {}


def test_api_and_stream_answer_and_their_healthchecks_pass(stack: Stack) -> None:
    _wait("the API's /api/health", lambda: _health(stack), stack)
    _wait("the stream's /health", lambda: httpx.get(f"http://127.0.0.1:{stack.ports['stream']}/health",
                                                    timeout=5).status_code == 200, stack)
    for name in ("api", "stream"):
        result = stack.healthcheck(name)
        assert result.returncode == 0, f"{name} healthcheck failed: {result.stderr}\n{stack.tail(name)}"
    page = httpx.get(f"{stack.api}/", timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower(), "the API serves the frontend at /"
    config = httpx.get(f"{stack.api}/api/config", timeout=10).json()
    assert config["stream_url"] is None, "browsers use the page's own origin: the proxy routes /ws/stream"


def test_worker_heartbeat_reaches_the_api_and_its_healthcheck(stack: Stack) -> None:
    health = _wait("a worker in /api/health", lambda: (h := _health(stack)) and h["workers"] and h, stack)
    assert health["status"] == "ok" and health["redis"]["ok"]
    assert health["workers"][0]["device"] in ("cpu", "cuda", "cuda:0")
    result = stack.healthcheck("worker")
    assert result.returncode == 0, f"worker healthcheck failed: {result.stderr}\n{stack.tail('worker')}"


def test_worker_healthcheck_fails_without_a_live_worker(stack: Stack) -> None:
    """Guards the healthcheck itself: pointed at an empty Redis database it reports unhealthy."""
    empty_db = stack.env["worker"]["REDIS_URL"].rsplit("/", 1)[0] + f"/{STACK_DB + 1}"
    result = stack.healthcheck("worker", REDIS_URL=empty_db)
    assert result.returncode == 1, result.stderr


def _tiny_png() -> bytes:
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((2, 2, 13, 13), fill=(30, 120, 220, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _first_frame(stack: Stack, model_id: str, owner: dict[str, str] | None = None) -> tuple[tuple, bytes]:
    url = f"ws://127.0.0.1:{stack.ports['stream']}/ws/stream?model={model_id}&fps=30"
    with ws_connect(url, open_timeout=30, close_timeout=5, additional_headers=owner or {}) as ws:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = ws.recv(timeout=30)
            if isinstance(message, bytes):
                return FRAME_HEADER.unpack_from(message), message
    pytest.fail(f"no frame for {model_id} within 30 s\n{stack.tail('stream')}")


def test_a_job_trains_through_the_api_and_the_stream_plays_it(stack: Stack) -> None:
    _wait("a worker in /api/health", lambda: (h := _health(stack)) and h["workers"], stack)
    response = httpx.post(f"{stack.api}/api/jobs", files={"image": ("disc.png", _tiny_png(), "image/png")},
                          data={k: str(v) for k, v in TINY_JOB.items()}, timeout=30)
    assert response.status_code == 202, response.text
    job_id, owner = response.json()["id"], {"X-Owner-Token": response.json()["owner_token"]}  # private to it
    export = REPO_ROOT / "models" / "jobs" / f"{job_id}.safetensors"  # the worker's export (compose: in its container)
    try:
        job = _wait("the job to finish", lambda: (j := httpx.get(f"{stack.api}/api/jobs/{job_id}", headers=owner,
                                                                         timeout=10).json())
                    ["status"] in ("succeeded", "failed", "cancelled") and j, stack, JOB_TIMEOUT)
        assert job["status"] == "succeeded", f"{job}\n{stack.all_logs()}"
        assert job["iteration"] == TINY_JOB["iterations"]
        model = httpx.get(f"{stack.api}{job['links']['model_file']}", headers=owner, timeout=10)
        assert model.status_code == 200 and len(model.content) > 1000

        (_, step, width, height, flags), frame = _first_frame(stack, job_id, owner)
        side = TINY_JOB["target_size"] + 2 * TINY_JOB["padding"]
        assert (width, height, flags) == (side, side, 0)
        assert len(frame) == FRAME_HEADER.size + width * height * 4
        assert export.is_file(), "the worker exports finished models to the image's models/jobs/"
        from backend.storage.artifacts import artifact_store  # the job's files landed in the compose bucket

        bucket = artifact_store(stack.env["api"]["NCA_ARTIFACTS"], endpoint_url=stack.env["api"]["NCA_S3_ENDPOINT_URL"],
                                access_key=S3_KEYS[0], secret_key=S3_KEYS[1])
        keys = [key for key, _ in bucket.objects(f"{job_id}/")]
        assert f"{job_id}/target" in keys and any("/model/" in k for k in keys), keys
    finally:
        export.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            export.parent.rmdir()  # only when empty: never touch other files


def test_the_shipped_example_models_are_served(stack: Stack) -> None:
    """models/ is baked into the image; natively it is the checkout's, as the image's default models_dir."""
    shipped = sorted(path.stem for path in (REPO_ROOT / "models").glob("*.safetensors"))
    listed = httpx.get(f"{stack.api}/api/models", timeout=10).json()["items"]
    examples = sorted(m["id"].removeprefix("example-") for m in listed if m["source"] == "example")
    assert examples == shipped
    if not shipped:
        pytest.skip("models/ ships no example model yet: nothing more to play")
    (_, _, width, height, _), frame = _first_frame(stack, f"example-{shipped[0]}")
    assert len(frame) == FRAME_HEADER.size + width * height * 4
