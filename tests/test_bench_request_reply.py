"""bench/request_reply.py still runs (one tiny round): it cannot rot. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_request_reply_bench_runs_and_prints_a_table() -> None:
    script = str(ROOT / "bench" / "request_reply.py")
    result = subprocess.run(
        [sys.executable, script, "--rounds", "1", "--requests", "20", "--in-flight", "50"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "| 1 |" in result.stdout and "(50 at once)" in result.stdout
