"""The redis service's own command and healthcheck, run natively with the bundled redis-server/redis-cli.

As in test_deploy_stack.py, only the port changes (a free one on 127.0.0.1 instead of 6379 in the container);
the data folder is the process's working directory, as `/data` is the redis image's.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from backend.storage.embedded_redis import free_port, redis_server_binary
from tests.deploy.compose_model import (
    COMPOSE_FILE,
    REDIS_PRIVATE_FILE,
    command_argv,
    interpolate,
    load,
    merge,
    resolved_environment,
    strip_tags,
)

PASSWORD = "0123abcd"
VARIANTS = {
    "docker-compose.yml": lambda: interpolate(strip_tags(load(COMPOSE_FILE)), {}),
    "+redis-private": lambda: interpolate(merge(load(COMPOSE_FILE), load(REDIS_PRIVATE_FILE)),
                                          {"REDIS_PASSWORD": PASSWORD, "REDIS_BIND_IP": "127.0.0.1"}),
}


class RedisService:
    def __init__(self, service: dict, data_dir: Path):
        self.service, self.data_dir, self.port = service, data_dir, free_port()
        argv = command_argv(service)
        assert argv[0] == "redis-server"
        argv = [redis_server_binary(), *argv[1:], "--port", str(self.port), "--bind", "127.0.0.1"]
        self.process = subprocess.Popen(argv, cwd=data_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        outer = {name: value for name, value in os.environ.items() if name != "REDISCLI_AUTH"}
        self.env = {**outer, **resolved_environment(service)}

    def healthcheck(self, **env_overrides: str) -> int:
        kind, command = self.service["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        cli = Path(redis_server_binary()).with_name("redis-cli")
        command = command.replace("redis-cli", f"{cli} -p {self.port}")
        env = {**self.env, **env_overrides}
        return subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=30).returncode

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.healthcheck() != 0:
            assert self.process.poll() is None, "redis-server exited: the compose command is not valid"
            assert time.monotonic() < deadline, "the redis healthcheck never passed"
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(params=list(VARIANTS))
def redis_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisService]:
    service = RedisService(VARIANTS[request.param]()["services"]["redis"], tmp_path)
    try:
        yield service
    finally:
        if service.process.poll() is None:
            service.stop()


def test_redis_command_runs_append_only_and_its_healthcheck_follows_it(redis_service: RedisService) -> None:
    redis_service.wait_healthy()
    password = redis_service.env.get("REDISCLI_AUTH")
    client = redis.Redis(port=redis_service.port, password=password)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    client.set("nca:deploy-check", "1")
    time.sleep(1.2)  # appendfsync everysec
    assert any(redis_service.data_dir.glob("appendonly*")), "no append-only file in the data folder"
    redis_service.stop()
    assert redis_service.healthcheck() != 0, "the healthcheck must fail when Redis is down"


def test_private_redis_refuses_clients_without_the_password(tmp_path: Path) -> None:
    service = RedisService(VARIANTS["+redis-private"]()["services"]["redis"], tmp_path)
    try:
        service.wait_healthy()  # the healthcheck logs in with REDISCLI_AUTH
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=service.port).ping()
        assert redis.Redis(port=service.port, password=PASSWORD).ping()
        assert service.healthcheck(REDISCLI_AUTH="wrong") != 0, "the healthcheck must check the PONG, not exit 0"
    finally:
        service.stop()
