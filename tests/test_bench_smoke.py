"""The benchmark still runs (one tiny round): it cannot rot. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_runs_and_prints_a_table() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "ours/raw" in result.stdout
    assert "consume" in result.stdout
