"""The upload cap holds while the body streams in; a Redis outage is a 503, and the API recovers."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.config import Settings
from backend.storage.embedded_redis import free_port, start_redis
from tests.conftest import REPO_ROOT, TINY_TRAINING, png_image, wait_for
from tests.helpers import stop_process

CAP = 100_000


@pytest.fixture(scope="module")
def api_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """The API as the contract runs it (uvicorn), with a 100 kB upload cap."""
    port, log_path = free_port(), tmp_path_factory.mktemp("api") / "api.log"
    env = {**os.environ, "REDIS_URL": redis_url, "NCA_MAX_UPLOAD_BYTES": str(CAP), "NCA_TORCH_THREADS": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "backend.api.main:app", "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=REPO_ROOT, env=env, stdout=log, stderr=log)

    def up() -> bool:
        assert process.poll() is None, log_path.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/config", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout=60, what="the API server")
    yield port, log_path
    stop_process(process)


def read_response(sock: socket.socket) -> bytes:
    """Status line, headers and the whole body (by Content-Length), however the server split them."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = lengths[0] if lengths else 0
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def send_until_answered(port: int, headers: str, chunk: bytes, chunks: int) -> tuple[bytes, int]:
    """Send a chunked body piece by piece; stop as soon as the server answers. Returns (answer, bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(headers.encode())
        for _ in range(chunks):
            if select.select([sock], [], [], 0.02)[0]:
                break
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        return read_response(sock), sent


def test_declared_size_over_the_cap_is_refused_before_reading(api_server) -> None:
    port, _ = api_server
    headers = ("POST /api/jobs HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=x\r\n"
               "Content-Length: 1000000000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(headers.encode())  # and no body at all
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"larger than" in answer


def test_streamed_body_is_cut_off_at_the_cap(api_server) -> None:
    """Without a Content-Length the server counts while reading and answers 413 long before the end."""
    port, _ = api_server
    headers = ("POST /api/jobs HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=x\r\n"
               "Transfer-Encoding: chunked\r\n\r\n")
    preamble = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    answer, sent = send_until_answered(port, headers, preamble + b"\0" * 16_000, chunks=400)  # 6.4 MB offered
    assert answer.startswith(b"HTTP/1.1 413") and b"larger than" in answer, answer
    assert sent < 20 * CAP, f"the server read {sent} bytes before refusing"


def test_api_still_serves_after_refusals(api_server) -> None:
    port, _ = api_server
    response = httpx.post(f"http://127.0.0.1:{port}/api/jobs", files={"image": ("a.png", png_image(), "image/png")},
                          data={**{k: str(v) for k, v in TINY_TRAINING.items()}, "iterations": "5"}, timeout=10)
    assert response.status_code == 202, response.text


def test_redis_outage_is_503_and_the_api_recovers(tmp_path: Path) -> None:
    server = start_redis(data_dir=tmp_path / "redis")
    port = server.port
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "heart.safetensors").write_bytes((REPO_ROOT / "models" / "heart.safetensors").read_bytes())
    try:
        settings = Settings(redis_url=server.url, models_dir=tmp_path / "models")
        with TestClient(create_app(settings)) as client:
            files = {"image": ("a.png", png_image(), "image/png")}
            data = {k: str(v) for k, v in TINY_TRAINING.items()}
            job = client.post("/api/jobs", files=files, data=data).json()
            server.stop()
            started = time.monotonic()
            for method, path in [("GET", f"/api/jobs/{job['id']}"), ("GET", "/api/jobs"),
                                 ("POST", f"/api/jobs/{job['id']}/cancel")]:
                response = client.request(method, path)
                assert response.status_code == 503, (path, response.text)
                assert "Redis" in response.json()["detail"]
            # The examples are files on this machine: still listed and served, with a word about the rest.
            models = client.get("/api/models")
            assert models.status_code == 200 and [m["id"] for m in models.json()["items"]] == ["example-heart"]
            assert "jobs unavailable" in models.headers["x-models-partial"]
            assert client.get("/api/models/example-heart/file").status_code == 200
            response = client.post("/api/jobs", files=files, data=data)
            assert response.status_code == 503 and "unreachable" in response.json()["detail"]
            health = client.get("/api/health")
            assert health.status_code == 503 and health.json()["redis"]["ok"] is False
            assert time.monotonic() - started < 10  # answered promptly, not after long retries

            server = start_redis(port=port, data_dir=tmp_path / "redis")  # back, with its data (append-only file)
            response = client.get(f"/api/jobs/{job['id']}")
            assert response.status_code == 200 and response.json()["status"] == "queued"
            assert client.get("/api/health").json()["redis"]["ok"] is True
            assert "x-models-partial" not in client.get("/api/models").headers
            assert client.post("/api/jobs", files=files, data=data).status_code == 202
    finally:
        server.stop()
