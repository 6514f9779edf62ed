"""The deployment docs stay true to the files: every setting documented, the README's Deploy section complete."""

from __future__ import annotations

import re

from backend.config import Settings
from tests.deploy.compose_model import COMPOSE_FILE, REPO_ROOT, command_argv, load, strip_tags

DEPLOY_DOC = REPO_ROOT / "docs" / "deploy.md"


def _env_name(field: str) -> str:
    return "REDIS_URL" if field == "redis_url" else f"NCA_{field.upper()}"


def test_every_setting_is_in_the_deploy_doc_table() -> None:
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", DEPLOY_DOC.read_text(), re.MULTILINE))
    missing = [_env_name(field) for field in Settings.model_fields if _env_name(field) not in documented]
    assert not missing, f"add these settings (backend/config.py) to the table in docs/deploy.md: {missing}"


def test_deploy_doc_shows_the_compose_commands() -> None:
    text = DEPLOY_DOC.read_text()
    for name, service in strip_tags(load(COMPOSE_FILE))["services"].items():
        assert " ".join(command_argv(service)) in text, f"docs/deploy.md does not show {name}'s command"


def test_readme_has_the_deploy_section() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"<!-- section: deploy -->(.*?)<!-- /section: deploy -->", readme, re.DOTALL)
    assert match, "README.md lacks the marked deploy section"
    section = match[1]
    for needed in ("docker compose up", "docker-compose.cpu.yml", "--scale worker=", "NVIDIA Container Toolkit",
                   "REDIS_URL=", "docker-compose.worker.yml",
                   "docker-compose.redis-private.yml", "docs/deploy.md"):
        assert needed in section, needed
