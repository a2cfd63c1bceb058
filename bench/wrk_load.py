"""HTTP load from ``wrk`` (Debian package ``wrk``): ``POST /orders`` on keep-alive connections.

``wrk`` is written in C (epoll, one event loop per thread), so on this 2-core machine it takes far less
of the CPU the server under test needs than any Python client; ``loadgen.py`` is the fallback when it is
not installed. A Lua script sets the method, body and content type, and prints the counts and latency
percentiles as one JSON line from ``done()``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from common import LOAD_CPU, ORDER_BODY, on_cpu, proc_cpu_seconds

# BENCH_LOADGEN=python forces the fallback generator (the smoke test covers both).
WRK = None if os.environ.get("BENCH_LOADGEN") == "python" else shutil.which("wrk")
THREADS = 2

SCRIPT = """
wrk.method = "POST"
wrk.path = "/orders"
wrk.body = 'BODY'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %d, "seconds": %f, "errors": %d, "p50_ms": %f, "p99_ms": %f}\\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
""".replace("BODY", ORDER_BODY.decode())


async def _wrk(script: Path, port: int, seconds: int, connections: int) -> dict[str, Any]:
    assert WRK is not None
    process = await asyncio.create_subprocess_exec(
        *on_cpu(LOAD_CPU),
        WRK,
        f"-t{THREADS}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/orders",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=seconds + 30)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed with exit code {process.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def wrk_run(port: int, seconds: int, connections: int, server_pid: int) -> dict[str, Any]:
    """``seconds`` s of load, with the server's CPU over them."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "orders.lua"
        script.write_text(SCRIPT)
        cpu = proc_cpu_seconds(server_pid)
        result = await _wrk(script, port, seconds, connections)
        result["server_cpu"] = proc_cpu_seconds(server_pid) - cpu
    return result
