"""`python -m backend.run`: bundled Redis, API, worker, stream and the proxy come up on one origin; a job
trains; Ctrl-C stops it all cleanly, and a job interrupted by it resumes at the next start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from websockets.sync.client import connect as ws_connect

from backend.run import port_in_use
from backend.storage.embedded_redis import free_port
from tests.conftest import REPO_ROOT, TINY_TRAINING, png_image, wait_for


class Launcher:
    """`python -m backend.run` on free ports with its own data folder, its output collected.

    In a session of its own, like a terminal's foreground job: `ctrl_c()` sends SIGINT to the whole
    process group, as the terminal does (so whatever the launcher left in its group gets it too).
    """

    def __init__(self, tmp_path: Path, proxy_host: str = "127.0.0.1"):
        self.proxy_host, self.proxy_port = proxy_host, free_port()
        self.api_port, self.stream_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "NCA_REDIS_URL")}
        env.update(NCA_PROXY_HOST=proxy_host, NCA_PROXY_PORT=str(self.proxy_port), NCA_API_PORT=str(self.api_port),
                   NCA_STREAM_PORT=str(self.stream_port), NCA_DATA_DIR=str(tmp_path / "data"),
                   NCA_MODELS_DIR=str(tmp_path / "models"), NCA_TORCH_THREADS="1")
        self.process = subprocess.Popen([sys.executable, "-m", "backend.run"], cwd=REPO_ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()
        self.base = f"http://{proxy_host}:{self.proxy_port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self) -> None:
        wait_for(lambda: f"Open {self.base} in your browser" in self.output
                 or self.process.poll() is not None, timeout=120, what="the 'Open ...' line")
        assert self.process.poll() is None, self.output[-3000:]
        self.redis_port = int(re.search(r"bundled Redis on redis://127.0.0.1:(\d+)", self.output).group(1))
        wait_for(lambda: httpx.get(f"{self.base}/api/health").json()["status"] == "ok", timeout=60, what="a worker")

    def ctrl_c(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)

    def wait_exit(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        self.reader.join(5)
        return code

    def ports_closed(self) -> bool:
        return not any(port_in_use(port) for port in (self.proxy_port, self.api_port, self.stream_port,
                                                      self.redis_port))


def _submit(base: str, iterations: int, checkpoint_every: int = 20) -> dict:
    fields = {k: str(v) for k, v in {**TINY_TRAINING, "iterations": iterations,
                                     "checkpoint_every": checkpoint_every}.items()}
    response = httpx.post(f"{base}/api/jobs", files={"image": ("a.png", png_image(), "image/png")}, data=fields)
    assert response.status_code == 202, response.text
    _OWNERS[response.json()["id"]] = response.json()["owner_token"]  # a new owner for each script run
    return response.json()


_OWNERS: dict[str, str] = {}


def _as_owner(job_id: str) -> dict[str, str]:
    return {"X-Owner-Token": _OWNERS[job_id]}


def _job(base: str, job_id: str) -> dict:
    return httpx.get(f"{base}/api/jobs/{job_id}", headers=_as_owner(job_id)).json()


def test_embedded_launcher_serves_one_origin_runs_a_job_and_stops_cleanly(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path, proxy_host="127.0.0.2")  # NCA_PROXY_HOST is obeyed
    try:
        launcher.wait_ready()
        page = httpx.get(f"{launcher.base}/")
        assert page.status_code == 200 and page.headers["server"] == "Caddy"  # the frontend, from the proxy
        assert not port_in_use(launcher.proxy_port, "127.0.0.1"), "the proxy listens only where it is told"
        for port in (launcher.api_port, launcher.stream_port):  # behind it, on the loopback
            assert port_in_use(port)
        job = _submit(launcher.base, iterations=40)
        wait_for(lambda: _job(launcher.base, job["id"])["status"] == "succeeded", timeout=60, what="the job")
        with ws_connect(f"ws://127.0.0.2:{launcher.proxy_port}/ws/stream?model={job['id']}", open_timeout=30,
                        additional_headers=_as_owner(job["id"])) as ws:
            assert '"type": "model"' in ws.recv(timeout=30)  # the stream, on the same origin
    finally:
        launcher.ctrl_c()
        code = launcher.wait_exit()
    assert code == 0, launcher.output[-3000:]
    assert "[run] stopped" in launcher.output
    assert launcher.ports_closed(), "a service is still running"


def test_ctrl_c_while_training_stops_cleanly_and_the_job_resumes_after_a_stop(tmp_path: Path) -> None:
    """SIGINT to the launcher's whole process group, as a terminal's Ctrl-C: the bundled Redis is in a session
    of its own and stops last, so nothing loses its connection (no traceback), the worker checkpoints the job
    and gives it back, and the next start resumes it as one that was stopped, not one whose worker was lost."""
    first = Launcher(tmp_path)
    try:
        first.wait_ready()
        job = _submit(first.base, iterations=20_000, checkpoint_every=10)
        wait_for(lambda: (_job(first.base, job["id"]).get("checkpoint_iteration") or 0) >= 10, timeout=120,
                 what="a checkpoint")
    finally:
        first.ctrl_c()
        code = first.wait_exit()
    assert code == 0, first.output[-3000:]
    assert "Traceback" not in first.output, first.output[-6000:]
    assert f"job {job['id']}: suspended" in first.output, "the worker gave the job back at a checkpoint"
    assert first.ports_closed(), "a service is still running"

    second = Launcher(tmp_path)  # same data folder: same Redis data
    try:
        second.wait_ready()
        resumed = wait_for(lambda: (j := _job(second.base, job["id"]))["resumed_from"] and j, timeout=60,
                           what="the job to resume")
        assert resumed["interrupted_by"] == "stop" and resumed["workers_lost"] == 0, resumed
        wait_for(lambda: f"resuming from the checkpoint at iteration {resumed['resumed_from'][-1]} after a stop"
                 in second.output, timeout=30, what="the worker's log line")
        httpx.post(f"{second.base}/api/jobs/{job['id']}/cancel", headers=_as_owner(job["id"]))
    finally:
        second.ctrl_c()
        code = second.wait_exit()
    assert code == 0 and "Traceback" not in second.output, second.output[-6000:]


def test_ctrl_c_while_idle_prints_no_traceback(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path)
    try:
        launcher.wait_ready()
    finally:
        launcher.ctrl_c()
        code = launcher.wait_exit()
    assert code == 0 and "Traceback" not in launcher.output, launcher.output[-6000:]
    assert launcher.ports_closed()


def test_a_dead_service_stops_everything(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path)
    try:
        launcher.wait_ready()
        worker_pid = int(httpx.get(f"{launcher.base}/api/health").json()["workers"][0]["id"].rsplit("-", 1)[1])
        os.kill(worker_pid, signal.SIGKILL)
        code = launcher.wait_exit()
    finally:
        if launcher.process.poll() is None:
            launcher.ctrl_c()
            launcher.wait_exit()
    assert code == 1
    assert "the worker service exited with code -9; stopping everything" in launcher.output
    assert launcher.ports_closed(), "a service is still running"
