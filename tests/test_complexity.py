"""No function in backend/ above cyclomatic complexity C (radon's ranks: A-B simple, C moderate, D+ to split):
a run loop, a request rule or a handler that grows past it is to be cut into named steps."""

from __future__ import annotations

from radon.complexity import cc_rank, cc_visit

from tests.helpers import REPO_ROOT


def test_no_function_in_backend_ranks_above_c() -> None:
    too_complex = []
    for path in sorted((REPO_ROOT / "backend").rglob("*.py")):
        for block in cc_visit(path.read_text()):
            if cc_rank(block.complexity) > "C":
                too_complex.append(f"{path.relative_to(REPO_ROOT)}:{block.lineno} {block.fullname} "
                                   f"({block.complexity}, {cc_rank(block.complexity)})")
    assert too_complex == [], "split these (`radon cc -n D backend`):\n" + "\n".join(too_complex)
