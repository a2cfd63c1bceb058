"""The benchmark still runs (one tiny round): it cannot rot. No timing is asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, env: dict[str, str] | None = None, script: str = "bench.py") -> subprocess.CompletedProcess[str]:
    """``bench/<script> --smoke`` with ``args``, its output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env=None if env is None else dict(os.environ, **env),
    )


def test_bench_smoke_runs_and_prints_a_table() -> None:
    result = bench()
    assert result.returncode == 0, result.stderr
    assert "ours/raw" in result.stdout
    assert "consume" in result.stdout
    assert "ours/ceiling" in result.stdout
    assert "consume no-op >= 0.9x the ceiling" in result.stdout
    assert "README route `POST /orders`" in result.stdout
    assert "| scale-out handler | consumer processes |" in result.stdout
    assert "| no-op | 2 |" in result.stdout
    assert "| 64 keys, 16 partitions, concurrency 16 | 300 | 1 |" in result.stdout  # key order vs a plain queue
    assert "| 64 keys, 64 partitions, concurrency 16 | 300 | 1 |" in result.stdout
    assert "key order (64 keys, 16 partitions, concurrency 16) >= 70% of a plain queue" in result.stdout


def test_bench_http_falls_back_to_the_python_load_generator() -> None:
    result = bench("--only", "http", env={"BENCH_LOADGEN": "python"})
    assert result.returncode == 0, result.stderr
    assert "warning: not using wrk" in result.stderr
    assert "load from bench/loadgen.py" in result.stdout
    assert "| asyncio + h11 | ours (`Depends(get_broker)`) |" in result.stdout
    assert "| asyncio + h11 | raw through `Depends` (control) |" in result.stdout


def test_bench_only_runs_the_chosen_sections() -> None:
    result = bench("--only", "seq")
    assert result.returncode == 0, result.stderr
    assert "| sequential publish (await each PubAck) |" in result.stdout
    assert "sequential publish >= 0.97x raw" in result.stdout  # its target
    assert "consume" not in result.stdout  # neither the other scenarios' rows nor their targets
    assert "req/s" not in result.stdout  # no HTTP table
    assert "lifespan" not in result.stdout
    assert "scale-out" not in result.stdout


def test_bench_outbox_smoke_runs_every_part() -> None:
    result = bench(script="outbox.py")  # a script of its own: its own nats-server and PostgreSQL
    assert result.returncode == 0, result.stderr
    assert "| PostgreSQL, LISTEN/NOTIFY across instances | 8 |" in result.stdout
    assert "| PostgreSQL | 2 | 50 |" in result.stdout
    assert "| SQLite | `Depends(inbox.session)` | 2.00 |" in result.stdout  # one statement more than plain
    assert "p50 <= 10 ms PostgreSQL across instances" in result.stdout
