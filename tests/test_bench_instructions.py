"""``bench/instructions.py`` still runs (one route, tiny counts, under Debian's valgrind): it cannot rot. The
count itself is not asserted beyond being a positive number."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_instructions_counts_one_request_of_the_readme_route_under_valgrind() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "instructions.py"),
            "--requests",
            "32,64",
            "--routes",
            "ours",
            "--loops",
            "asyncio",
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    row = re.search(r"\| asyncio \| ours \(`Depends\(get_broker\)`\) \| ([\d,]+)k \| - \| - \|", result.stdout)
    assert row is not None, result.stdout
    assert int(row.group(1).replace(",", "")) > 0
