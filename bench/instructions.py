"""What one request of the HTTP route costs in CPU instructions, counted by valgrind: the same on every run,
whatever else the machine does (issue #11's 3% margins are below the ±15% that req/s moves by here).

Usage::

    .venv/bin/python bench/instructions.py [--requests 320,1280] [--routes raw,raw_depends,ours,faststream]
                                           [--loops asyncio,uvloop] [--jobs 2]

It starts its own nats-server (outside valgrind), then for every route of ``http_app.py`` and every loop
runs ``instructions.py --one`` under ``valgrind --tool=callgrind`` twice: the app in process through
``asgi-lifespan``, called as an ASGI app (no sockets, no HTTP parser: what differs between the routes),
32 requests in flight as wrk's 32 connections, after 64 requests of warm-up and with ``gc.freeze()``
(a full collection's place in the run would otherwise move the count). The difference between the two
runs' totals, divided by the difference of their request counts, is one request's instructions of this
process: the route, FastAPI, pydantic, the client library and the event loop; not the kernel, not
nats-server. Needs Debian's ``valgrind``; a run of the defaults takes about 9 minutes on 2 cores.

Under valgrind the process runs some 50 times slower while nats-server does not, so what depends on time
counts differently: the PubAck inbox's timers shared by the requests due in the same 10 ms
(``backends/jetstream/pubacks.py``) are shared by none here, and ours' count is high by up to the ~15k
instructions a timer of its own costs on asyncio's loop.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from asgi_lifespan import LifespanManager
from common import fresh_stream, run_on
from gc_pauses import IN_FLIGHT, InProcess
from http_app import APPS

WARMUP = 64
_COLLECTED = re.compile(r"Collected : (\d+)")


async def _requests(url: str, route: str, requests: int) -> None:
    """The measured process: ``requests`` requests of ``route`` after the warm-up."""
    name = f"INSN_{route.upper()}_{os.getpid()}"
    app = APPS[route](url, name, name.lower())
    async with fresh_stream(url, name, [name.lower()], max_msgs=100_000), LifespanManager(app) as manager:
        caller = InProcess(manager)
        for _ in range(WARMUP // IN_FLIGHT):
            await caller.burst()
        gc.collect()
        gc.freeze()
        for _ in range(requests // IN_FLIGHT):
            await caller.burst()
    try:
        caller.check(route)
    except RuntimeError as error:
        raise SystemExit(str(error)) from None


def _count(url: str, route: str, loop: str, requests: int) -> int:
    """Instructions of one valgrind run of ``requests`` requests."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={Path(tmp) / 'out'}",
                sys.executable,
                __file__,
                "--one",
                route,
                loop,
                str(requests),
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{route} on {loop}: valgrind exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def _per_request(url: str, route: str, loop: str, counts: tuple[int, int]) -> float:
    small, large = (_count(url, route, loop, n) for n in counts)
    return (large - small) / (counts[1] - counts[0])


def main(requests: tuple[int, int], routes: list[str], loops: list[str], jobs: int) -> None:
    from report import HTTP_LABELS

    from jetstream_fastapi.server import NatsServer

    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    with NatsServer() as server, ThreadPoolExecutor(jobs) as pool:
        cells = {
            (loop, route): pool.submit(_per_request, server.url, route, loop, requests)
            for loop in loops
            for route in routes
        }
        lines = [
            f"Instructions per request (valgrind callgrind; {requests[1]} requests less {requests[0]}, in process, "
            f"{IN_FLIGHT} in flight)\n",
            "| loop | route | instructions per request | vs raw | vs the control |",
            "|---|---|---:|---:|---:|",
        ]
        for loop in loops:
            per = {route: cells[loop, route].result() for route in routes}
            for route in routes:
                vs_raw = f"{per[route] / per['raw']:.3f}" if "raw" in per else "-"
                vs_control = f"{per[route] / per['raw_depends']:.3f}" if "raw_depends" in per else "-"
                lines.append(f"| {loop} | {HTTP_LABELS[route]} | {per[route] / 1e3:,.0f}k | {vs_raw} | {vs_control} |")
            sys.stderr.write(f"{loop}: done\n")
        print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        route, loop, count, url = sys.argv[2:6]
        run_on(loop, _requests(url, route, int(count)))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", default="320,1280", help="the two request counts, small,large")
    parser.add_argument("--routes", default="raw,raw_depends,ours,faststream")
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    small, large = (int(n) for n in args.requests.split(","))
    main((small, large), args.routes.split(","), args.loops.split(","), args.jobs)
