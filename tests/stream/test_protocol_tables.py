"""What is defined once in backend/stream (close codes) and what must follow it."""

from __future__ import annotations

import json
import re

from backend.stream import protocol
from tests.helpers import REPO_ROOT


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
