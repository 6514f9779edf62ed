"""docker-compose.yml and the CPU override: valid Compose files that deploy what issue 6 asks for."""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft7Validator

from backend.config import Settings
from tests.deploy.compose_model import (
    ALL_FILES,
    CADDYFILE,
    COMPOSE_FILE,
    CPU_OVERRIDE_FILE,
    REDIS_PRIVATE_FILE,
    REMOTE_WORKER_FILE,
    REPO_ROOT,
    TLS_OVERRIDE_FILE,
    Reset,
    command_argv,
    extend,
    interpolate,
    load,
    merge,
    resolved_environment,
    strip_tags,
    variable_defaults,
)

COMPOSE_SCHEMA = REPO_ROOT.parent / "shared" / "reference" / "compose-spec.json"
# What a host sets for the files that refuse to start without it (`${VAR:?message}`).
REQUIRED_HOST_ENV = {"REDIS_PASSWORD": "0123abcd", "REDIS_BIND_IP": "10.0.0.1",
                     "REDIS_URL": "redis://:0123abcd@10.0.0.1:6379/0", "NCA_DOMAIN": "nca.example.org",
                     "NCA_S3_ENDPOINT_URL": "http://10.0.0.1:9000"}
# Settings whose compose default differs from backend/config.py's on purpose: compose stores artifacts in its
# `s3` service's bucket (and creates it), a bare `python -m backend.run` in a local folder (.data/artifacts).
COMPOSE_OWN_DEFAULTS = {"NCA_ARTIFACTS", "NCA_S3_ENDPOINT_URL", "NCA_S3_ACCESS_KEY_ID", "NCA_S3_SECRET_ACCESS_KEY",
                        "NCA_S3_CREATE_BUCKET"}
PYTHON_SERVICES = ("api", "worker", "stream")
BEHIND_PROXY = ("api", "stream")  # what the proxy forwards to
CADDYFILE_IN_CONTAINER = "/etc/caddy/Caddyfile"

# The service commands every part of the project agrees on (python -m backend.run, compose, tests).
CONTRACT_COMMANDS = {
    "api": "uvicorn backend.api.main:app --host 0.0.0.0 --port 8000",
    "worker": "celery -A backend.worker.celery_app worker --pool=solo --concurrency=1 --prefetch-multiplier=1 "
              "--loglevel=INFO",
    "stream": "uvicorn backend.stream.app:app --host 0.0.0.0 --port 8001",
    "proxy": f"caddy run --config {CADDYFILE_IN_CONTAINER} --adapter caddyfile",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    """docker-compose.yml as Compose sees it with no variables set (every `${VAR:-default}` at its default)."""
    return interpolate(strip_tags(load(COMPOSE_FILE)), {})


@pytest.fixture(scope="module")
def cpu_compose() -> dict:
    """docker-compose.yml with docker-compose.cpu.yml merged on top, as `-f a -f b` does."""
    return interpolate(merge(load(COMPOSE_FILE), load(CPU_OVERRIDE_FILE)), {})


@pytest.fixture(scope="module")
def schema_validator() -> Draft7Validator:
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(f"Compose specification schema not found at {COMPOSE_SCHEMA} "
                    "(../shared is absent in a fresh clone)")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _errors(validator: Draft7Validator, document: dict) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_compose_file_validates_against_the_compose_spec(schema_validator: Draft7Validator, path: Path) -> None:
    raw = strip_tags(load(path))
    assert _errors(schema_validator, raw) == []
    assert _errors(schema_validator, interpolate(raw, REQUIRED_HOST_ENV)) == []


def test_every_compose_file_is_checked() -> None:
    assert sorted(REPO_ROOT.glob("docker-compose*.yml")) == sorted(ALL_FILES)


def test_merged_cpu_variant_validates_against_the_compose_spec(schema_validator, cpu_compose) -> None:
    assert _errors(schema_validator, cpu_compose) == []


def test_the_schema_check_rejects_a_broken_file(schema_validator, compose) -> None:
    """Guards the check itself: a misspelt key and a bad healthcheck are reported."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["healthchek"] = broken["services"]["api"].pop("healthcheck")
    broken["services"]["redis"]["volumes"] = "redis-data:/data"
    assert len(_errors(schema_validator, broken)) >= 2


def test_services_and_their_commands_are_the_contract(compose) -> None:
    assert set(compose["services"]) == {"proxy", "redis", "s3", "api", "worker", "stream"}
    for name, command in CONTRACT_COMMANDS.items():
        assert command_argv(compose["services"][name]) == shlex.split(command), name


def test_backend_run_starts_the_same_commands(compose) -> None:
    """`python -m backend.run` (one machine, no Docker) and compose run the same service commands; only the
    interpreter prefix and the listening address differ (loopback there, all interfaces in a container)."""
    from backend.run import services

    for service in services(api_port=8000, stream_port=8001):
        argv = service.command
        assert argv[:2] == [sys.executable, "-m"], service.name
        local, deployed = argv[2:], command_argv(compose["services"][service.name])
        if "--host" in local:
            local[local.index("--host") + 1] = deployed[deployed.index("--host") + 1]
        assert local == deployed, service.name


def test_backend_run_starts_the_compose_proxy_with_the_same_caddyfile(compose) -> None:
    """One proxy configuration: compose mounts deploy/Caddyfile where its command reads it, and
    `python -m backend.run` runs the same command on the same file."""
    from backend.run import proxy_service

    proxy = compose["services"]["proxy"]
    mounts = {target: source for source, target, *_ in (volume.split(":") for volume in proxy["volumes"])}
    assert (REPO_ROOT / mounts[CADDYFILE_IN_CONTAINER]).resolve() == CADDYFILE
    assert (REPO_ROOT / mounts["/srv/frontend"]).resolve() == REPO_ROOT / "frontend", "the Caddyfile's default root"
    local = proxy_service(Settings(), caddy="caddy")
    argv = local.command
    assert argv[argv.index("--config") + 1] == str(CADDYFILE)
    argv[argv.index("--config") + 1] = CADDYFILE_IN_CONTAINER
    assert argv == command_argv(proxy)
    assert local.env["NCA_PROXY_UPSTREAMS"] == "list" and "NCA_PROXY_UPSTREAMS" not in proxy["environment"]


def _adapt(env: dict[str, str]) -> dict:
    """deploy/Caddyfile as Caddy itself reads it with these variables (`caddy adapt`: parse, no listening)."""
    from backend.run import caddy_binary

    result = subprocess.run([caddy_binary(), "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _proxy_handlers(config: dict) -> list[dict]:
    found = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            if value.get("handler") == "reverse_proxy":
                found.append(value)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(config)
    return found


def test_the_caddyfile_finds_replicas_by_dns_in_compose_and_by_address_natively(compose) -> None:
    """Compose's environment: every address of the service names `api` and `stream` (so --scale works);
    backend.run's: its fixed addresses. The stream routes (rooms, and single viewers) never buffer; a room's
    joiners go by a hash of its id, viewers to the replica with the fewest connections."""
    from backend.run import proxy_service

    in_compose = _proxy_handlers(_adapt(resolved_environment(compose["services"]["proxy"])))
    assert sorted((h["dynamic_upstreams"]["name"], h["dynamic_upstreams"]["port"]) for h in in_compose) == \
        [("api", "8000"), ("stream", "8001"), ("stream", "8001")]
    assert all(h["dynamic_upstreams"]["source"] == "a" and h["dynamic_upstreams"]["refresh"] <= 5e9
               for h in in_compose)
    local = proxy_service(Settings(api_port=8101, stream_port=8102))
    natively = _proxy_handlers(_adapt({**local.env, "PATH": "/usr/bin:/bin"}))
    assert sorted(u["dial"] for h in natively for u in h["upstreams"]) == \
        ["127.0.0.1:8101", "127.0.0.1:8102", "127.0.0.1:8102"]
    stream_routes = [h for h in natively if h["upstreams"][0]["dial"].endswith(":8102")]
    assert all(h["flush_interval"] == -1 for h in stream_routes)
    policies = sorted(h["load_balancing"]["selection_policy"]["policy"] for h in stream_routes)
    assert policies == ["least_conn", "query"]
    assert next(h for h in stream_routes if h["load_balancing"]["selection_policy"]["policy"] == "query"
                )["load_balancing"]["selection_policy"]["key"] == "room"


@pytest.mark.parametrize("variant", ["compose", "cpu_compose"])
def test_python_services_share_one_image_built_once_from_the_dockerfile(variant, request) -> None:
    """Only the worker builds; api and stream run its image and never pull that name from a registry
    (so one build exports one image, not three identical ones)."""
    services = request.getfixturevalue(variant)["services"]
    images = {services[name]["image"] for name in PYTHON_SERVICES}
    assert len(images) == 1
    assert [name for name, service in services.items() if "build" in service] == ["worker"]
    build = services["worker"]["build"]
    assert build["context"] == "."
    assert not build.get("dockerfile") or build["dockerfile"] == "Dockerfile"
    for name in BEHIND_PROXY:
        assert services[name]["pull_policy"] == "never", name
    assert services["redis"]["image"] == "redis:7"
    assert services["proxy"]["image"] == "caddy:2"


def test_every_service_has_a_healthcheck_without_curl(compose) -> None:
    for name, service in compose["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        if name in PYTHON_SERVICES:
            assert "curl" not in " ".join(test) and "wget" not in " ".join(test), f"{name}: slim images have neither"
    assert compose["services"]["proxy"]["healthcheck"]["test"][1] == "wget"  # busybox's, in the caddy image
    assert "redis-cli ping" in " ".join(compose["services"]["redis"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(compose["services"]["api"]["healthcheck"]["test"])
    assert "/health" in " ".join(compose["services"]["stream"]["healthcheck"]["test"])


def test_python_services_wait_for_a_healthy_redis(compose) -> None:
    for name in PYTHON_SERVICES:
        depends_on = compose["services"][name]["depends_on"]
        assert depends_on["redis"]["condition"] == "service_healthy", name
        assert depends_on["s3"]["condition"] == "service_healthy", name


def test_redis_refuses_writes_when_full_instead_of_evicting(compose) -> None:
    """noeviction: an LRU policy evicted job records and a running job's lease (issue 21)."""
    argv = command_argv(compose["services"]["redis"])
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"
    assert argv[argv.index("--maxmemory") + 1]


def test_the_artifact_store_is_an_s3_service_on_a_named_volume(compose) -> None:
    s3 = compose["services"]["s3"]
    assert s3["image"] == "rclone/rclone:1"
    argv = command_argv(s3)
    assert argv[:2] == ["serve", "s3"] and argv[-1] == "/data"
    volume, target = s3["volumes"][0].split(":")[:2]
    assert target == "/data" and volume in compose["volumes"]
    env = compose["services"]["api"]["environment"]
    assert env["NCA_ARTIFACTS"].startswith("s3://") and env["NCA_S3_ENDPOINT_URL"] == "http://s3:9000"
    assert f"{env['NCA_S3_ACCESS_KEY_ID']},{env['NCA_S3_SECRET_ACCESS_KEY']}" == argv[argv.index("--auth-key") + 1]


def test_the_s3_healthcheck_passes_against_a_real_rclone_and_fails_without_it(compose, s3_server: str) -> None:
    """The healthcheck's command, run here against the session's `rclone serve s3` (the image's server) in
    place of :9000: rclone answers an unsigned GET / with an S3 error (400), which must count as up, and a
    port nobody listens on as down. GNU wget here; the image has busybox's, which prints the same line."""
    import shutil

    from backend.storage.embedded_redis import free_port

    if shutil.which("wget") is None:
        pytest.skip("no wget on this machine")
    test = compose["services"]["s3"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    port = s3_server.rsplit(":", 1)[1]

    def check(at: str) -> int:
        return subprocess.run(["sh", "-c", test[1].replace("127.0.0.1:9000", f"127.0.0.1:{at}")],
                              timeout=30).returncode

    assert check(port) == 0, "rclone serve s3 is up: the healthcheck must say so"
    assert check(str(free_port())) != 0, "nothing listens: the healthcheck must fail"


@pytest.mark.parametrize("variant", ["compose", "cpu_compose"])
def test_only_the_proxy_publishes_a_port(variant, request) -> None:
    """One origin: the page, the API and the stream all go through the proxy's one port, so api and stream
    can scale (a published host port would collide) and nothing reaches them past the proxy."""
    services = request.getfixturevalue(variant)["services"]
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    assert published == {"proxy": ["8000:80"]}
    assert not any("expose" in service or "network_mode" in service for service in services.values())


def test_the_api_and_stream_trust_forwarded_addresses_only_from_the_proxy(compose) -> None:
    """uvicorn takes the client address from X-Forwarded-For only when the connection comes from
    FORWARDED_ALLOW_IPS: that must be exactly the proxy's fixed address, which no other container can get."""
    for host_env in ({}, {"NCA_PROXY_ADDRESS": "10.9.8.2", "NCA_SUBNET": "10.9.8.0/24",
                          "NCA_SUBNET_DYNAMIC_RANGE": "10.9.8.128/25"}):
        configured = interpolate(strip_tags(load(COMPOSE_FILE)), host_env)
        proxy_address = configured["services"]["proxy"]["networks"]["default"]["ipv4_address"]
        for name in BEHIND_PROXY:
            assert resolved_environment(configured["services"][name])["FORWARDED_ALLOW_IPS"] == proxy_address, name
        (pool,) = configured["networks"]["default"]["ipam"]["config"]
        address, subnet, dynamic = (ipaddress.ip_address(proxy_address), ipaddress.ip_network(pool["subnet"]),
                                    ipaddress.ip_network(pool["ip_range"]))
        assert address in subnet and dynamic.subnet_of(subnet)
        assert address not in dynamic, "another container could be given the proxy's address"
        assert address != next(subnet.hosts()), "the first address is the network's gateway"


def test_worker_scales_and_reserves_one_nvidia_gpu(compose) -> None:
    services = compose["services"]
    assert not any("container_name" in service for service in services.values()), "fixed names block --scale"
    worker = services["worker"]
    assert "ports" not in worker
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name in ("api", "stream", "redis"):
        assert "deploy" not in services[name], f"only the worker reserves a GPU, not {name}"


def test_cpu_override_drops_only_the_gpu_reservation(compose, cpu_compose) -> None:
    override = load(CPU_OVERRIDE_FILE)
    assert isinstance(override["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"], Reset)
    worker = cpu_compose["services"]["worker"]
    assert "devices" not in worker.get("deploy", {}).get("resources", {}).get("reservations", {})
    assert worker["build"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    for name in PYTHON_SERVICES:
        merged, base = cpu_compose["services"][name], compose["services"][name]
        assert merged["image"] != base["image"], "the CPU image must not overwrite the CUDA image's tag"
        assert command_argv(merged) == command_argv(base)
        assert merged["environment"] == base["environment"]
        assert merged["healthcheck"] == base["healthcheck"]


def test_redis_persists_append_only_on_a_named_volume(compose) -> None:
    redis = compose["services"]["redis"]
    argv = command_argv(redis)
    assert argv[0] == "redis-server"
    assert argv[argv.index("--appendonly") + 1] == "yes"
    volume, target = redis["volumes"][0].split(":")[:2]
    assert target == "/data"
    assert volume in compose["volumes"], "a named volume, not a host path"


def test_settings_come_from_the_environment_with_defaults() -> None:
    """Every variable in an `environment` block has a default in the file, and the NCA_ defaults equal
    backend/config.py's, so `docker compose up` and a bare `python -m backend.run` behave alike."""
    raw = load(COMPOSE_FILE)
    settings_defaults = Settings.model_construct()  # field defaults, ignoring this process's environment
    for name in PYTHON_SERVICES:
        environment = raw["services"][name]["environment"]
        assert environment, name
        for variable, value in environment.items():
            defaults = variable_defaults(str(value))
            if variable == "FORWARDED_ALLOW_IPS":  # uvicorn's own variable: the proxy's address (test above)
                continue
            assert str(value) == f"${{{variable}:-{defaults.get(variable, '')}}}", (
                f"{name}: {variable} should be `${{{variable}:-default}}` so it can be set from the host")
            if variable.startswith("NCA_") and variable not in COMPOSE_OWN_DEFAULTS:
                field = variable.removeprefix("NCA_").lower()
                assert field in Settings.model_fields, f"{variable} is not a setting in backend/config.py"
                parsed = Settings.model_validate({field: defaults[variable]})
                assert getattr(parsed, field) == getattr(settings_defaults, field), variable
    assert resolved_environment(raw["services"]["api"])["REDIS_URL"] == "redis://redis:6379/0"


def test_environment_is_interpolated_from_the_host(compose) -> None:
    """Setting a variable on the host reaches the service (and a host port moves the published port)."""
    host_env = {"NCA_CHECKPOINT_EVERY": "25", "NCA_PROXY_PORT": "9000", "REDIS_URL": "redis://10.0.0.5:6379/1"}
    configured = interpolate(strip_tags(load(COMPOSE_FILE)), host_env)
    worker_env = resolved_environment(configured["services"]["worker"])
    assert worker_env["NCA_CHECKPOINT_EVERY"] == "25"
    assert worker_env["REDIS_URL"] == "redis://10.0.0.5:6379/1"
    assert configured["services"]["proxy"]["ports"] == ["9000:80"]


def test_tls_override_publishes_80_and_443_for_a_required_domain(compose) -> None:
    raw = merge(load(COMPOSE_FILE), load(TLS_OVERRIDE_FILE))
    with pytest.raises(KeyError, match="NCA_DOMAIN"):
        interpolate(raw, {})
    proxy = interpolate(raw, {"NCA_DOMAIN": "nca.example.org"})["services"]["proxy"]
    assert proxy["ports"] == ["80:80", "443:443", "443:443/udp"], "replaced, not added to the HTTP port"
    assert proxy["environment"]["NCA_SITE_ADDRESS"] == "nca.example.org"
    config = _adapt(resolved_environment(proxy))  # Caddy turns a domain into HTTPS on 443 with a redirect on 80
    servers = config["apps"]["http"]["servers"]
    assert any(listen.endswith(":443") for server in servers.values() for listen in server["listen"])
    assert "/data" in {volume.split(":")[1] for volume in proxy["volumes"]}, "certificates must survive restarts"


def test_private_redis_override_requires_a_password_and_a_private_address(compose) -> None:
    """Redis reachable from other machines: never without a password, never on all interfaces."""
    raw = merge(load(COMPOSE_FILE), load(REDIS_PRIVATE_FILE))
    for missing in ("REDIS_PASSWORD", "REDIS_BIND_IP"):
        with pytest.raises(KeyError, match=missing):
            interpolate(raw, {k: v for k, v in REQUIRED_HOST_ENV.items() if k != missing})
    merged = interpolate(raw, REQUIRED_HOST_ENV)
    redis = merged["services"]["redis"]
    argv = command_argv(redis)
    assert argv[argv.index("--requirepass") + 1] == REQUIRED_HOST_ENV["REDIS_PASSWORD"]
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert redis["ports"] == ["10.0.0.1:6379:6379"]
    assert redis["environment"]["REDISCLI_AUTH"] == REQUIRED_HOST_ENV["REDIS_PASSWORD"]
    assert redis["volumes"] == compose["services"]["redis"]["volumes"]
    for name in PYTHON_SERVICES:
        assert merged["services"][name]["environment"]["REDIS_URL"] == "redis://:0123abcd@redis:6379/0"
        assert command_argv(merged["services"][name]) == command_argv(compose["services"][name])


def test_remote_worker_file_runs_the_same_worker_against_a_given_redis(compose) -> None:
    raw = load(REMOTE_WORKER_FILE)
    assert set(raw["services"]) == {"worker"}, "only workers run on the extra GPU machines"
    with pytest.raises(KeyError, match="REDIS_URL"):
        interpolate(strip_tags(raw), {})
    worker = interpolate(extend(raw["services"]["worker"]), REQUIRED_HOST_ENV)
    assert "depends_on" not in worker, "there is no local redis service to wait for"
    assert worker["environment"]["REDIS_URL"] == REQUIRED_HOST_ENV["REDIS_URL"]
    base = compose["services"]["worker"]
    assert command_argv(worker) == command_argv(base)
    for key in ("deploy", "healthcheck", "image", "build", "stop_grace_period"):
        assert worker[key] == base[key], key
    assert worker["environment"]["NCA_S3_ENDPOINT_URL"] == REQUIRED_HOST_ENV["NCA_S3_ENDPOINT_URL"]
    remote = ("REDIS_URL", "NCA_S3_ENDPOINT_URL")  # the main host's Redis and artifact store
    assert {k: v for k, v in worker["environment"].items() if k not in remote} == \
        {k: v for k, v in base["environment"].items() if k not in remote}
    assert "ports" not in worker and "container_name" not in worker
