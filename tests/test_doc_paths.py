"""Every file or folder of the repository that the docs name in backticks exists: when code
moves (docs/design/005-code-map.md), a page pointing at the old place fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = ("agent", "cloud_sync", "modules", "simulators", "bench", "tests", "scripts", "configs", "docs")
NAMED = re.compile(rf"`((?:{'|'.join(TOP)})/[A-Za-z0-9_./-]*)(?::[A-Za-z_]\w*)?`")


def named_paths(text: str) -> list[tuple[int, str]]:
    return [
        (number, match.group(1))
        for number, line in enumerate(text.splitlines(), 1)
        for match in NAMED.finditer(line)
    ]


def test_the_pattern_reads_what_the_docs_write():
    text = "see `cloud_sync/protocol/` and `docs/x.py:Poller`, not `agent/*.py` or `pip install`"
    assert named_paths(text) == [(1, "cloud_sync/protocol/"), (1, "docs/x.py")]


def test_every_path_the_docs_name_exists():
    pages = sorted([*(ROOT / "docs").rglob("*.md"), ROOT / "README.md"])
    assert len(pages) > 10
    missing = [
        f"{page.relative_to(ROOT)}:{number}: {path}"
        for page in pages
        for number, path in named_paths(page.read_text())
        if not (ROOT / path).exists()
    ]
    assert missing == []
