"""Fallback HTTP load generator (when ``wrk`` is not installed): keep-alive connections on loopback, each
sending ``POST /orders`` back to back.

Usage (``bench/http_route.py`` starts it, in its own process)::

    loadgen.py PORT SECONDS CONNECTIONS SERVER_PID

A minimal HTTP/1.1 client on asyncio streams (uvloop when installed) rather than httpx: on a 2-core
machine the client shares the CPUs with the server under test, and ``httpx.AsyncClient`` (0.28, 32
connections) managed only ~450-490 req/s at ~2 ms of client CPU per request against the same server
where this loop does 2.7-3.5k req/s at 45-60 µs: with httpx the benchmark would measure httpx.

Requests go for ``SECONDS``. Prints one JSON object: requests answered, seconds, errors, latency
percentiles (ms), and the server's CPU seconds over them (``/proc/<SERVER_PID>/stat``), the same fields
as ``wrk_load.py``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

from common import HAVE_UVLOOP, ORDER_BODY, proc_cpu_seconds

HOST = "127.0.0.1"
UNBOUNDED = 10**12  # requests: each run is bounded by its duration


class Load:
    def __init__(self, port: int) -> None:
        self.request = (
            f"POST /orders HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(ORDER_BODY)}\r\n\r\n"
        ).encode() + ORDER_BODY
        self.port = port
        self.remaining = 0
        self.deadline = 0.0
        self.latencies: list[float] = []
        self.errors = 0

    async def connection(self) -> None:
        reader, writer = await asyncio.open_connection(HOST, self.port)
        try:
            while self.remaining > 0 and time.perf_counter() < self.deadline:
                self.remaining -= 1
                start = time.perf_counter()
                writer.write(self.request)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) != b"\r\n":
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                if status.split()[1] != b"202":
                    self.errors += 1
                self.latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    async def run(self, requests: int, connections: int, max_seconds: float) -> float:
        self.remaining = requests
        self.latencies = []
        self.errors = 0
        start = time.perf_counter()
        self.deadline = start + max_seconds
        await asyncio.gather(*(self.connection() for _ in range(connections)))
        return time.perf_counter() - start


async def main(argv: list[str]) -> None:
    port, seconds, connections = int(argv[0]), float(argv[1]), int(argv[2])
    server_pid = int(argv[3])
    load = Load(port)
    cpu = proc_cpu_seconds(server_pid)
    seconds = await load.run(UNBOUNDED, connections, seconds)
    cpu = proc_cpu_seconds(server_pid) - cpu
    quantiles = statistics.quantiles(load.latencies, n=100, method="inclusive")
    result = {
        "requests": len(load.latencies),
        "seconds": seconds,
        "errors": load.errors,
        "p50_ms": quantiles[49] * 1e3,
        "p99_ms": quantiles[98] * 1e3,
        "server_cpu": cpu,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    if HAVE_UVLOOP:
        import uvloop

        uvloop.run(main(sys.argv[1:]))
    else:
        asyncio.run(main(sys.argv[1:]))
