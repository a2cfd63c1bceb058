"""What one HTTP request, and one consumed message, cost in CPU instructions, counted by valgrind: the same
on every run, whatever else the machine does (issue #11's 3% margins are below the ±15% that req/s moves
by here, and issue #24's consume ratios moved by ±25% between runs of one day).

Usage::

    .venv/bin/python bench/instructions.py [--requests 320,1280] [--routes raw,raw_depends,ours,faststream]
                                           [--loops asyncio,uvloop] [--jobs 2]
    .venv/bin/python bench/instructions.py --consume [--messages 2000,8000]
                                           [--consumers ours,ours:metrics,ours:otel,ceiling,raw] [--loops ...]

It starts its own nats-server (outside valgrind), then runs ``instructions.py`` with a measured process
under ``valgrind --tool=callgrind`` twice per cell, with a small and a large count. The difference between
the two runs' totals, divided by the difference of their counts, is one request's (one message's)
instructions of this process: the library, the client library and the event loop, and for HTTP FastAPI
and pydantic; not the kernel, not nats-server. Startup, connecting and the warm-up cancel out. Needs
Debian's ``valgrind``; a run of the HTTP defaults takes about 9 minutes on 2 cores.

**HTTP** (the default): for every route of ``http_app.py`` and every loop, the app in process through
``asgi-lifespan``, called as an ASGI app (no sockets, no HTTP parser: what differs between the routes),
32 requests in flight as wrk's 32 connections, after 64 requests of warm-up and with ``gc.freeze()``
(a full collection's place in the run would otherwise move the count).

**Consume** (``--consume``): the stream is filled with that many 256-byte messages before valgrind starts
(the publishing is not counted), then the measured process drains it with a durable consumer ``bench``
after ``gc.freeze()``, as ``throughput.py`` does: ``ours`` is ``broker.subscribe`` with a no-op handler
(batch 100, concurrency 100), ``ceiling`` the nats.go-style pull loop with the handler inline, ``raw``
nats-py's ``fetch(100)`` and ``ack()``. After the run a ``consumer_info`` check confirms nothing was left
pending or unacked. What is installed is chosen per cell (``ours:<mode>``): ``default`` is the library's
default install (``prometheus_client`` and ``opentelemetry`` hidden from the process, see
``common.hide_packages``), ``api`` has ``opentelemetry-api`` without an SDK, ``metrics`` the ``metrics``
extra with Prometheus recording, ``otel`` an OpenTelemetry SDK tracer provider with a batch processor and
an exporter that drops every span (``observability.configure``).

Under valgrind the process runs some 50 times slower while nats-server does not, so what depends on time
counts differently. HTTP: the PubAck inbox's timers shared by the requests due in the same 10 ms
(``backends/jetstream/pubacks.py``) are shared by none here, and ours' count is high by up to the ~15k
instructions a timer of its own costs on asyncio's loop. Consume: the server always has the next messages
ready (a pull is answered before the client has handled the last one), and ours' watchdog ticks every
2.5 s of wall time. How the bytes arrive still moves a count: runs of the defaults back to back agree
within about 0.5% (2,000 and 4,000 messages: 1.5%), runs hours apart on a machine under another load
within 2%; compare builds side by side (two checkouts, ``--jobs 1`` each, at the same time).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import BATCH, Target, check_consumed, fresh_stream, hide_packages, prefill, run_on

WARMUP = 64
_COLLECTED = re.compile(r"Collected : (\d+)")
CONSUMERS = ("ours", "ours:api", "ours:metrics", "ours:otel", "ceiling", "raw")
_HIDDEN = {
    "default": ("prometheus_client", "opentelemetry"),
    "api": ("prometheus_client",),
    "metrics": ("opentelemetry",),
    "otel": ("prometheus_client",),
}
CONSUMER_LABELS = {
    "ours": "ours (default install)",
    "ours:api": "ours, opentelemetry-api without an SDK",
    "ours:metrics": "ours, `metrics` extra (Prometheus on)",
    "ours:otel": "ours, OpenTelemetry SDK (dropping exporter)",
    "ceiling": "ceiling (nats.go-style loop)",
    "raw": f"raw nats-py (`fetch({BATCH})`)",
}


# -- the measured processes --------------------------------------------------------------------------


async def _requests(url: str, route: str, requests: int) -> None:
    """``requests`` requests of ``route`` after the warm-up."""
    from asgi_lifespan import LifespanManager
    from gc_pauses import IN_FLIGHT, InProcess
    from http_app import APPS

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


def consume_one(consumer: str, loop: str, target: Target, messages: int) -> None:
    """Drain ``messages`` of ``target``'s filled stream as ``consumer`` (``ours:<mode>``, ``ceiling``, ``raw``)."""
    impl, _, mode = consumer.partition(":")
    hide_packages(*_HIDDEN[mode or "default"])  # before the library (and throughput.py) is imported
    if mode == "otel":
        from observability import configure

        configure("tracing")
    from throughput import ceiling_drain, ours_drain, raw_drain

    drain = {"ours": ours_drain, "ceiling": ceiling_drain, "raw": raw_drain}[impl]
    gc.collect()
    gc.freeze()
    run_on(loop, drain(target, messages))


# -- counting ----------------------------------------------------------------------------------------


def _count(arguments: list[str], what: str) -> int:
    """Instructions of one valgrind run of ``instructions.py <arguments>``."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={Path(tmp) / 'out'}",
                sys.executable,
                __file__,
                *arguments,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{what}: valgrind exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def _per_request(url: str, route: str, loop: str, counts: tuple[int, int]) -> float:
    small, large = (_count(["--one", route, loop, str(n), url], f"{route} on {loop}") for n in counts)
    return (large - small) / (counts[1] - counts[0])


def _consumed(url: str, consumer: str, loop: str, messages: int) -> int:
    """Instructions of one valgrind run draining a stream filled (outside valgrind) with ``messages``."""
    name = f"INSN_CONSUME_{uuid.uuid4().hex[:10].upper()}"
    target = Target(url, name, name.lower())

    async def run() -> int:
        async with fresh_stream(url, name, [target.subject]):
            await prefill(target, messages)
            arguments = ["--consume-one", consumer, loop, str(messages), url, name]
            count = await asyncio.to_thread(_count, arguments, f"{consumer} on {loop}")
            await check_consumed(url, name, "bench")
            return count

    return asyncio.run(run())


def _per_message(url: str, consumer: str, loop: str, counts: tuple[int, int]) -> float:
    small, large = (_consumed(url, consumer, loop, n) for n in counts)
    return (large - small) / (counts[1] - counts[0])


# -- the tables --------------------------------------------------------------------------------------


def http_main(requests: tuple[int, int], routes: list[str], loops: list[str], jobs: int) -> None:
    from gc_pauses import IN_FLIGHT
    from report import HTTP_LABELS

    from jetstream_fastapi.server import NatsServer

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


def consume_main(messages: tuple[int, int], consumers: list[str], loops: list[str], jobs: int) -> None:
    from jetstream_fastapi.server import NatsServer

    with NatsServer() as server, ThreadPoolExecutor(jobs) as pool:
        cells = {
            (loop, consumer): pool.submit(_per_message, server.url, consumer, loop, messages)
            for loop in loops
            for consumer in consumers
        }
        lines = [
            f"Instructions per consumed message (valgrind callgrind; {messages[1]} messages less {messages[0]}, "
            f"256 bytes, no-op handler, batch {BATCH})\n",
            "| loop | consumer | instructions per message | vs the ceiling | vs ours (default) |",
            "|---|---|---:|---:|---:|",
        ]
        for loop in loops:
            per = {consumer: cells[loop, consumer].result() for consumer in consumers}
            for consumer in consumers:
                vs_ceiling = f"{per[consumer] / per['ceiling']:.3f}" if "ceiling" in per else "-"
                vs_ours = f"{per[consumer] / per['ours'] - 1:+.1%}" if "ours" in per else "-"
                label = CONSUMER_LABELS[consumer]
                lines.append(f"| {loop} | {label} | {per[consumer] / 1e3:,.1f}k | {vs_ceiling} | {vs_ours} |")
            sys.stderr.write(f"{loop}: done\n")
        print("\n".join(lines))


def _pair(text: str) -> tuple[int, int]:
    small, large = (int(n) for n in text.split(","))
    return small, large


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        route, loop, count, url = sys.argv[2:6]
        run_on(loop, _requests(url, route, int(count)))
        sys.exit(0)
    if sys.argv[1:2] == ["--consume-one"]:
        consumer, loop, count, url, stream = sys.argv[2:7]
        consume_one(consumer, loop, Target(url, stream, stream.lower()), int(count))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consume", action="store_true", help="count consumed messages instead of HTTP requests")
    parser.add_argument("--requests", default="320,1280", help="the two request counts, small,large")
    parser.add_argument("--routes", default="raw,raw_depends,ours,faststream")
    parser.add_argument("--messages", default="2000,8000", help="--consume: the two message counts, small,large")
    parser.add_argument("--consumers", default=",".join(CONSUMERS), help="--consume: " + ", ".join(CONSUMERS))
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    if args.consume:
        unknown = set(args.consumers.split(",")) - set(CONSUMERS)
        if unknown:
            parser.error(f"--consumers: unknown {', '.join(sorted(unknown))}")
        consume_main(_pair(args.messages), args.consumers.split(","), args.loops.split(","), args.jobs)
    else:
        http_main(_pair(args.requests), args.routes.split(","), args.loops.split(","), args.jobs)
