"""The README's HTTP publish route under uvicorn: ours vs raw nats-py vs FastStream, req/s and latency.

:func:`serving` runs one implementation of the route (``http_app.py``, one worker, the given event loop
and HTTP parser) in a uvicorn process on a fresh stream; :func:`http_load` puts it under ``wrk`` (2 threads,
32 keep-alive connections; ``wrk_load.py``) when installed, else the Python generator ``loadgen.py``
(with a warning), for a fixed time, and reads the server's CPU time over it from ``/proc``. On two CPUs
or more, uvicorn runs alone on CPU 1 and the load and nats-server on CPU 0 (``common.PIN``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from common import BENCH_DIR, LOAD_CPU, SERVER_CPU, Target, fresh_stream, on_cpu
from wrk_load import WRK, wrk_run

CONNECTIONS = 32
GENERATOR = f"wrk -t2 -c{CONNECTIONS}" if WRK else f"bench/loadgen.py, {CONNECTIONS} connections (not wrk)"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 40.0  # above nats-py's 30 s drain timeout


@dataclass(frozen=True)
class ServerConfig:
    label: str
    loop: str
    http: str


PLAIN = ServerConfig("asyncio + h11", "asyncio", "h11")
FAST = ServerConfig("uvloop + httptools", "uvloop", "httptools")


@dataclass(frozen=True)
class HttpSample:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.server_cpu / self.requests * 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, server: asyncio.subprocess.Process) -> None:
    """uvicorn listens only once the lifespan startup is complete."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if server.returncode is not None:
            raise RuntimeError(f"the HTTP server exited with code {server.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


async def stop(server: asyncio.subprocess.Process) -> None:
    """SIGINT (uvicorn's graceful shutdown, which runs the lifespan shutdown), SIGKILL if that hangs."""
    if server.returncode is None:
        server.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(server.wait(), timeout=STOP_TIMEOUT)
    except TimeoutError:
        server.kill()
        await server.wait()
        raise RuntimeError(f"the HTTP server did not stop within {STOP_TIMEOUT:g} s of SIGINT") from None


async def python_load(port: int, seconds: int, server_pid: int) -> dict[str, Any]:
    """The fallback generator, in its own process."""
    load = await asyncio.create_subprocess_exec(
        *on_cpu(LOAD_CPU),
        sys.executable,
        str(BENCH_DIR / "loadgen.py"),
        str(port),
        str(seconds),
        str(CONNECTIONS),
        str(server_pid),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(load.communicate(), timeout=seconds + STARTUP_TIMEOUT)
    except TimeoutError:
        load.kill()
        raise
    if load.returncode != 0:
        raise RuntimeError(f"the load generator failed with exit code {load.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


@dataclass(frozen=True)
class Served:
    """One route being served: its implementation and the uvicorn process's port and pid."""

    impl: str
    port: int
    pid: int


@contextlib.asynccontextmanager
async def serving(url: str, impl: str, config: ServerConfig, rnd: int) -> AsyncIterator[Served]:
    """A uvicorn process serving ``impl`` on a stream of its own, from listening to stopped."""
    key = f"{config.loop}_{impl}_r{rnd}"
    target = Target(url, f"BENCH_HTTP_{key.upper()}", f"bench.http.{key}")
    port = free_port()
    async with fresh_stream(url, target.stream, [target.subject]):
        server = await asyncio.create_subprocess_exec(
            *on_cpu(SERVER_CPU),
            sys.executable,
            str(BENCH_DIR / "http_app.py"),
            impl,
            url,
            target.stream,
            target.subject,
            str(port),
            config.loop,
            config.http,
        )
        try:
            await wait_listening(port, server)
            yield Served(impl, port, server.pid)
        finally:
            await stop(server)


async def http_load(served: Served, seconds: int) -> HttpSample:
    """``seconds`` of load on ``served``, with the server's CPU over them."""
    if WRK:
        result = await wrk_run(served.port, seconds, CONNECTIONS, served.pid)
    else:
        result = await python_load(served.port, seconds, served.pid)
    sample = HttpSample(**result)
    if sample.errors:
        raise RuntimeError(f"{served.impl}: {sample.errors} requests did not answer 202")
    return sample
