"""bench/observability.py still runs (one tiny round of two modes): it cannot rot. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_observability_bench_runs_and_prints_a_table() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "observability.py"),
            "--rounds",
            "1",
            "--messages",
            "200",
            "--modes",
            "off,both",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "| off |" in result.stdout and "| both |" in result.stdout
    assert "| metrics |" not in result.stdout  # only the chosen modes ran
    assert "bare span" in result.stdout
