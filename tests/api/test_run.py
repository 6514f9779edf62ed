"""`python -m backend.run`: bundled Redis, API, worker and stream come up; a job trains; Ctrl-C stops it all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from backend.run import port_in_use
from backend.storage.embedded_redis import free_port
from tests.conftest import REPO_ROOT, TINY_TRAINING, png_image, wait_for


class Launcher:
    """`python -m backend.run` on free ports with its own data folder, its output collected."""

    def __init__(self, tmp_path: Path, api_host: str = "127.0.0.1"):
        self.api_host, self.api_port, self.stream_port = api_host, free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "NCA_REDIS_URL")}
        env.update(NCA_API_PORT=str(self.api_port), NCA_STREAM_PORT=str(self.stream_port),
                   NCA_DATA_DIR=str(tmp_path / "data"), NCA_MODELS_DIR=str(tmp_path / "models"),
                   NCA_TORCH_THREADS="1", NCA_API_HOST=api_host)
        self.process = subprocess.Popen([sys.executable, "-m", "backend.run"], cwd=REPO_ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()
        self.base = f"http://{api_host}:{self.api_port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self) -> None:
        wait_for(lambda: f"Open {self.base} in your browser" in self.output
                 or self.process.poll() is not None, timeout=120, what="the 'Open ...' line")
        assert self.process.poll() is None, self.output[-3000:]
        self.redis_port = int(re.search(r"bundled Redis on redis://127.0.0.1:(\d+)", self.output).group(1))
        wait_for(lambda: httpx.get(f"{self.base}/api/health").json()["status"] == "ok", timeout=60, what="a worker")

    def wait_exit(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        self.reader.join(5)
        return code

    def ports_closed(self) -> bool:
        return not (port_in_use(self.api_port, self.api_host) or port_in_use(self.stream_port)
                    or port_in_use(self.redis_port))


def test_embedded_launcher_runs_a_job_and_stops_cleanly(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path, api_host="127.0.0.2")  # NCA_API_HOST is obeyed (it used to be ignored)
    try:
        launcher.wait_ready()
        assert httpx.get(f"{launcher.base}/").status_code == 200  # the frontend
        assert not port_in_use(launcher.api_port, "127.0.0.1")
        assert port_in_use(launcher.stream_port)
        fields = {k: str(v) for k, v in {**TINY_TRAINING, "iterations": 40}.items()}
        job = httpx.post(f"{launcher.base}/api/jobs", files={"image": ("a.png", png_image(), "image/png")},
                         data=fields).json()
        wait_for(lambda: httpx.get(f"{launcher.base}/api/jobs/{job['id']}").json()["status"] == "succeeded",
                 timeout=60, what="the job")
    finally:
        launcher.process.send_signal(signal.SIGINT)  # Ctrl-C
        code = launcher.wait_exit()
    assert code == 0, launcher.output[-3000:]
    assert "[run] stopped" in launcher.output
    assert launcher.ports_closed(), "a service is still running"


def test_a_dead_service_stops_everything(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path)
    try:
        launcher.wait_ready()
        worker_pid = int(httpx.get(f"{launcher.base}/api/health").json()["workers"][0]["id"].rsplit("-", 1)[1])
        os.kill(worker_pid, signal.SIGKILL)
        code = launcher.wait_exit()
    finally:
        if launcher.process.poll() is None:
            launcher.process.send_signal(signal.SIGINT)
            launcher.wait_exit()
    assert code == 1
    assert "the worker service exited with code -9; stopping everything" in launcher.output
    assert launcher.ports_closed(), "a service is still running"
