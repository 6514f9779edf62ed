"""What is defined once in backend/stream (close codes) and what must follow it; no import cycle in the package."""

from __future__ import annotations

import ast
import json
import re

from backend.stream import protocol
from tests.helpers import REPO_ROOT

STREAM_PACKAGE = REPO_ROOT / "backend" / "stream"


def test_the_protocol_docs_list_every_close_code_and_only_those() -> None:
    text = (REPO_ROOT / "docs" / "stream-protocol.md").read_text()
    table = text[text.index("## Close codes"):]
    table = table[: table.index("\n\n", table.index("| Code"))]
    rows = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\|\s*(\d{4})\s*\|(.*)\|\s*$", table, re.M)}
    assert set(rows) == set(protocol.CLOSE_CODES.values())
    for code, row in rows.items():  # the last column says whether to retry
        retry = row.rsplit("|", 1)[1].strip()
        assert retry.startswith("no") == (code in protocol.FINAL_CLOSE_CODES), (code, retry)


def test_the_frontend_gives_up_on_the_same_close_codes() -> None:
    script = (REPO_ROOT / "frontend" / "js" / "stream.js").read_text()
    listed = re.search(r"export const FINAL_CLOSE_CODES = (\[[\d, ]*\]);", script)
    assert listed is not None, "stream.js lost its FINAL_CLOSE_CODES table"
    assert sorted(json.loads(listed.group(1))) == sorted(protocol.FINAL_CLOSE_CODES)


def _local_imports(path) -> set[str]:
    """Sibling modules of backend/stream that `path` imports, TYPE_CHECKING-only imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found |= {node.module} if node.module else {alias.name for alias in node.names}
            elif node.module and node.module.startswith("backend.stream"):
                rest = node.module.removeprefix("backend.stream").lstrip(".")
                found |= {rest.split(".")[0]} if rest else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("backend.stream.")}
    return found


def test_no_import_cycle_inside_the_stream_package() -> None:
    modules = {path.stem: path for path in STREAM_PACKAGE.glob("*.py") if path.stem != "__init__"}
    graph = {name: _local_imports(path) & set(modules) for name, path in modules.items()}
    assert graph["engine"] >= {"sessions"}  # the walker sees imports at all

    def cycle_from(start: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in graph[path[-1]]:
            if nxt == start:
                return (*path, start)
            if nxt not in path and (found := cycle_from(start, (*path, nxt))):
                return found
        return None

    cycles = [c for name in graph if (c := cycle_from(name, (name,)))]
    assert not cycles, f"import cycles in backend/stream: {cycles}"
