"""Small helpers shared by tests (import as `tests.helpers`)."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class UvicornServer:
    """An ASGI app run the way the contract runs it (`uvicorn APP`), in a subprocess on 127.0.0.1:`port`.

    The port is chosen by the test (usually `free_port()`), so a stopped server can be restarted where
    its clients expect it.
    """

    app: str  # e.g. "backend.stream.app:app"
    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> UvicornServer:
        command = [sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.app} exited early:\n{self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    stop_process(self.process)
                    raise RuntimeError(f"{self.app} did not listen within {timeout:.0f} s") from None
                time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def url(self, model: str, **params: object) -> str:
        """The stream service's WebSocket URL for `model` with query parameters."""
        query = "&".join(f"{k}={v}" for k, v in {"model": model, **params}.items())
        return f"ws://127.0.0.1:{self.port}/ws/stream?{query}"

    def health(self) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5).json()
