"""The repository is self-contained: no file points a reader at documents outside it (a clone has
no ../shared, DESIGN.md or reference/ folder)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"DESIGN\.md|reference/\w+\.md|shared/(?:seeds|reference)")


def test_no_tracked_file_cites_a_document_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for name in files:
        if not name.endswith((".py", ".md", ".yaml", ".yml", ".j2", ".sh", ".toml", ".txt")) or name.startswith(
            "records/"
        ):
            continue
        if name == "tests/test_repository_contracts.py":
            continue
        for number, line in enumerate((REPO / name).read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
