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


def test_embedded_launcher_runs_a_job_and_stops_cleanly(tmp_path: Path) -> None:
    api_port, stream_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "NCA_REDIS_URL")}
    env.update(NCA_API_PORT=str(api_port), NCA_STREAM_PORT=str(stream_port), NCA_DATA_DIR=str(tmp_path / "data"),
               NCA_MODELS_DIR=str(tmp_path / "models"), NCA_TORCH_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "backend.run"], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(f"Open http://127.0.0.1:{api_port} in your browser" in line for line in lines)
                 or process.poll() is not None, timeout=120, what="the 'Open ...' line")
        assert process.poll() is None, "".join(lines)[-3000:]
        redis_port = int(re.search(r"bundled Redis on redis://127.0.0.1:(\d+)", "".join(lines)).group(1))
        base = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: httpx.get(f"{base}/api/health").json()["status"] == "ok", timeout=60, what="a worker")
        assert httpx.get(f"{base}/").status_code == 200  # the frontend
        assert port_in_use(stream_port)

        fields = {k: str(v) for k, v in {**TINY_TRAINING, "iterations": 40}.items()}
        job = httpx.post(f"{base}/api/jobs", files={"image": ("a.png", png_image(), "image/png")}, data=fields).json()
        wait_for(lambda: httpx.get(f"{base}/api/jobs/{job['id']}").json()["status"] == "succeeded", timeout=60,
                 what="the job")
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        code = process.wait(60)
        reader.join(5)
    output = "".join(lines)
    assert code == 0, output[-3000:]
    assert "[run] stopped" in output
    assert not any(port_in_use(p) for p in (api_port, stream_port, redis_port)), "a service is still running"
