"""The README's Guarantees table: whole, and naming tests that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _guarantees() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Guarantees") : text.index("Not promised")]
    start = section.index("| promise")
    return section[start:].rstrip("\n").split("\n")


def test_the_guarantees_table_is_one_table() -> None:
    # A blank or stray line would end the table there: the rows after it would
    # render as a paragraph of pipes.
    rows = _guarantees()
    assert all(row.startswith("| ") and row.endswith(" |") for row in rows), rows
    assert len(rows) > 20


def test_every_test_the_guarantees_name_exists() -> None:
    # By file name: two packages' tests may share one (test_kernel_fidelity.py),
    # so a name's source is all of them.
    sources: dict[str, str] = {}
    for p in (REPO / "tests").rglob("test_*.py"):
        sources[p.name] = sources.get(p.name, "") + p.read_text()
    missing = []
    for row in _guarantees()[2:]:
        current = None
        for cell in re.findall(r"`([^`]+)`", row.split(" | ", 1)[1]):
            m = re.fullmatch(r"(?:tests/(?:[\w/]+/)?)?(test_\w+\.py)(?:::(\w+))?", cell)
            if m:
                current = m.group(1)
                name = m.group(2)
            elif re.fullmatch(r"test_\w+", cell):
                name = cell
            else:
                continue
            if current not in sources:
                missing.append(cell)
            elif name and f"def {name}(" not in sources[current]:
                missing.append(f"{current}::{name}")
    assert not missing, missing
