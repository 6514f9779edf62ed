"""Read docker-compose files the way Docker Compose does, for the few features our files use.

No Docker engine runs where the tests run, so the tests need Compose's own rules: YAML with the
`!reset` / `!override` merge tags, `${VAR:-default}` interpolation, and the merge of an override file
onto the base file (mappings merge, sequences append, `command` and `healthcheck.test` replace).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
CPU_OVERRIDE_FILE = REPO_ROOT / "docker-compose.cpu.yml"
REDIS_PRIVATE_FILE = REPO_ROOT / "docker-compose.redis-private.yml"
REMOTE_WORKER_FILE = REPO_ROOT / "docker-compose.worker.yml"
TLS_OVERRIDE_FILE = REPO_ROOT / "docker-compose.tls.yml"
ALL_FILES = (COMPOSE_FILE, CPU_OVERRIDE_FILE, REDIS_PRIVATE_FILE, REMOTE_WORKER_FILE, TLS_OVERRIDE_FILE)
CADDYFILE = REPO_ROOT / "deploy" / "Caddyfile"  # the proxy's configuration, in compose and natively

# Compose replaces these values instead of appending to them (compose-spec "merge" rules).
_REPLACED_SEQUENCES = {"command", "entrypoint", "test"}


@dataclass(frozen=True)
class Reset:
    """`!reset <value>`: the merge removes the attribute."""

    value: Any


@dataclass(frozen=True)
class Override:
    """`!override <value>`: the merge replaces the attribute instead of merging into it."""

    value: Any


class _ComposeLoader(yaml.SafeLoader):
    pass


def _construct_tagged(wrapper: type):
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return wrapper(loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return wrapper(loader.construct_sequence(node, deep=True))
        return wrapper(loader.construct_scalar(node))

    return construct


_ComposeLoader.add_constructor("!reset", _construct_tagged(Reset))
_ComposeLoader.add_constructor("!override", _construct_tagged(Override))


def load(path: Path) -> dict:
    """A compose file as Python data; merge tags become `Reset` / `Override` markers."""
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 - SafeLoader subclass


def strip_tags(value: Any) -> Any:
    """The data with merge tags replaced by their plain values (what the JSON schema sees)."""
    if isinstance(value, Reset | Override):
        return strip_tags(value.value)
    if isinstance(value, dict):
        return {key: strip_tags(item) for key, item in value.items()}
    if isinstance(value, list):
        return [strip_tags(item) for item in value]
    return value


def merge(base: Any, override: Any, key: str | None = None) -> Any:
    """Compose's merge of an override file onto a base file."""
    if isinstance(override, Override):
        return strip_tags(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for name, value in override.items():
            if isinstance(value, Reset):
                merged.pop(name, None)
            elif name in merged:
                merged[name] = merge(merged[name], value, name)
            else:
                merged[name] = strip_tags(value)
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in _REPLACED_SEQUENCES:
        return base + strip_tags(override)
    return strip_tags(override)


_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                       r"|(?P<plain>[A-Za-z_]\w*))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Substitute `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}` and `$$` like Compose."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["plain"]
        op, arg = match["op"], match["arg"]
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and (current is None or (op == ":?" and not current)):
            raise KeyError(f"required variable {name} is missing: {arg}")
        return current or ""

    return _VARIABLE.sub(substitute, value)


def variable_defaults(text: str) -> dict[str, str]:
    """Every `${VAR:-default}` in a compose value, as {VAR: default}."""
    return {m["braced"]: m["arg"] for m in _VARIABLE.finditer(text) if m["braced"] and m["op"] in (":-", "-")}


def extend(service: dict, base_dir: Path = REPO_ROOT) -> dict:
    """A service with its `extends` (another file's service) resolved: that service merged with this one."""
    if "extends" not in service:
        return service
    source = load(base_dir / service["extends"]["file"])["services"][service["extends"]["service"]]
    return merge(extend(source, base_dir), {key: value for key, value in service.items() if key != "extends"})


def command_argv(service: dict) -> list[str]:
    """A service's `command` as argv (Compose splits a string command like a shell, without running one)."""
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def resolved_environment(service: dict, env: dict[str, str] | None = None) -> dict[str, str]:
    """A service's `environment`, interpolated against `env` (default: nothing set, so compose's defaults)."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    resolved = interpolate(environment, env or {})
    return {name: "" if value is None else str(value) for name, value in resolved.items()}
