"""``bench/instructions.py``'s measured process still runs: what valgrind counts, here without valgrind (under
it a run takes about a minute), for ours on asyncio's loop (uvloop comes with the ``bench`` extra, which
the test setup does not install) against the session's nats-server. Nothing is timed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jetstream_fastapi.server import NatsServer

ROOT = Path(__file__).resolve().parent.parent


def test_the_measured_process_serves_the_readme_route(nats_server: NatsServer) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "instructions.py"), "--one", "ours", "asyncio", "64", nats_server.url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    # It exits non-zero when any request did not answer 202.
    assert result.returncode == 0, result.stderr
