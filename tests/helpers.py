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
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO_ROOT = Path(__file__).resolve().parent.parent


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# The subject of synthetic_photo(): an ellipse (left, top, right, bottom) in a 240 x 180 picture.
PHOTO_SIZE = (240, 180)
PHOTO_SUBJECT = (70, 40, 170, 150)


def synthetic_photo() -> Image.Image:
    """An opaque "photo": a shaded orange subject with two dark eyes on a busy, textured background
    (green and blue noise with grey stripes), as a phone picture of a thing on a table would be."""
    width, height = PHOTO_SIZE
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 90, (height, width, 1))
    ys, xs = np.mgrid[0:height, 0:width]
    stripes = ((xs + ys) // 12 % 2)[..., None] * np.array([50, 50, 50])
    background = np.clip(np.array([30, 110, 90]) + noise * np.array([0.3, 1.0, 0.8]) + stripes, 0, 255)
    img = Image.fromarray(background.astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(1))
    subject = Image.new("L", PHOTO_SIZE, 0)
    ImageDraw.Draw(subject).ellipse(PHOTO_SUBJECT, fill=255)
    shade = np.clip(np.array([235, 130, 30]) * (1.1 - 0.3 * (ys[..., None] - 40) / 110), 0, 255)
    img.paste(Image.fromarray(shade.astype(np.uint8), "RGB"), (0, 0), subject)
    draw = ImageDraw.Draw(img)
    for cx in (100, 140):
        draw.ellipse((cx - 7, 75, cx + 7, 89), fill=(40, 25, 20))
    return img


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
