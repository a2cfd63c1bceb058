"""The benchmark still runs (one tiny round): it cannot rot. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    """``bench/bench.py --smoke`` with ``args``, its output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def test_bench_smoke_runs_and_prints_a_table() -> None:
    result = bench()
    assert result.returncode == 0, result.stderr
    assert "ours/raw" in result.stdout
    assert "consume" in result.stdout


def test_bench_only_runs_the_chosen_sections() -> None:
    result = bench("--only", "seq")
    assert result.returncode == 0, result.stderr
    assert "| sequential publish (await each PubAck) |" in result.stdout
    assert "sequential publish >= 0.97x raw" in result.stdout  # its target
    assert "consume" not in result.stdout  # neither the other scenarios' rows nor their targets
    assert "req/s" not in result.stdout  # no HTTP table
    assert "lifespan" not in result.stdout
