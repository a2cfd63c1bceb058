"""JetStreamBroker ("ours") against nats-py used directly ("raw") and FastStream 0.7.8, on a local nats-server.

Run from the repository root::

    .venv/bin/python bench/bench.py [--rounds 5] [--messages N] [--smoke]

Starts its own ``nats-server -js`` (loopback, temporary store) and runs, in this order:

* throughput (``throughput.py``): sequential publish, pipelined publish, publish_many, consume with a
  no-op handler; raw, ours and FastStream in interleaved rounds (the starting implementation rotates);
* a 10 ms handler at concurrency 256 (``slow_handler.py``): msg/s and the server's max ack pending;
* app startup/shutdown under ``jetstream_lifespan`` (``lifecycle.py``);
* an HTTP publish route under uvicorn (``http_route.py``): req/s, p50/p99 latency, server CPU;
* memory (``memory.py``, once, in subprocesses): peak RSS draining a backlog, RSS across publish_many.

Prints markdown tables (medians over rounds, min..max, ratios of medians, CPU time per message) and
the issue #5 targets with whether each is met. A full run needs the ``bench`` extra
(``pip install -e '.[bench]'``: FastStream, uvloop, httptools); ``--smoke`` (tiny sizes, one round, for
CI) skips whatever of those is missing and says "not installed".
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from common import (
    HAVE_FASTSTREAM,
    HAVE_HTTPTOOLS,
    HAVE_UVLOOP,
    NOT_INSTALLED,
    RUN_TIMEOUT,
    Sample,
    Target,
    fresh_stream,
    rotated,
)
from http_route import FAST, PLAIN, http_run
from lifecycle import lifecycle_round
from memory import measure_drain, measure_publish
from report import Results, report
from slow_handler import CONCURRENCY, ours_slow, raw_slow
from throughput import SCENARIOS

from jetstream_fastapi.server import NatsServer, find_nats_server

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    throughput: dict[str, int]
    slow: int  # messages through the 10 ms handler
    drain: int  # backlog drained in the memory measurement
    publish: int  # publishes in the memory measurement
    http_requests: int
    http_warmup: int
    http_fast: bool  # also serve with uvloop + httptools (when installed)


FULL = Sizes(
    throughput={sc.key: sc.default_n for sc in SCENARIOS},
    slow=20_000,
    drain=200_000,
    publish=1_000_000,
    http_requests=10_000,
    http_warmup=1_000,
    http_fast=True,
)
SMOKE = Sizes(
    throughput=dict.fromkeys((sc.key for sc in SCENARIOS), 500),
    slow=500,
    drain=2_000,
    publish=5_000,
    http_requests=200,
    http_warmup=50,
    http_fast=False,  # each HTTP run starts two processes (~1 s): the smoke serves asyncio + h11 only
)


STARTED = time.monotonic()


def progress(text: str) -> None:
    print(f"  [{time.monotonic() - STARTED:6.1f} s] {text}", file=sys.stderr, flush=True)


async def on_fresh_stream(
    url: str, name: str, impl: str, rnd: int, run: Callable[[Target, int], Awaitable[T]], n: int
) -> T:
    """Run ``run(target, n)`` on a stream created for it alone, deleted afterwards."""
    target = Target(url, f"BENCH_{name.upper()}_R{rnd}_{impl.upper()}", f"bench.{name}.r{rnd}.{impl}")
    async with fresh_stream(url, target.stream, [target.subject]), asyncio.timeout(RUN_TIMEOUT):
        return await run(target, n)


async def run_throughput(url: str, results: Results, impls: list[str]) -> None:
    for sc in SCENARIOS:
        n = results.sizes[sc.key]
        runners = {"raw": sc.raw, "ours": sc.ours, "faststream": sc.faststream}
        runs: dict[str, list[Sample]] = {impl: [] for impl in impls if runners[impl] is not None}
        for rnd in range(1, results.rounds + 1):
            for impl in rotated(list(runs), rnd):
                sample = await on_fresh_stream(url, sc.key, impl, rnd, runners[impl], n)
                runs[impl].append(sample)
                progress(f"{sc.title} round {rnd} {impl}: {sample.rate:,.0f} msg/s, {sample.cpu_us:.1f} µs CPU/msg")
        results.throughput[sc.key] = runs


async def run_slow(url: str, results: Results) -> None:
    runners = {"raw": raw_slow, "ours": ours_slow}
    results.slow = {impl: [] for impl in runners}
    for rnd in range(1, results.rounds + 1):
        for impl in rotated(list(runners), rnd):
            sample = await on_fresh_stream(url, "slow", impl, rnd, runners[impl], results.sizes["slow"])
            results.slow[impl].append(sample)
            progress(
                f"10 ms handler x{CONCURRENCY} round {rnd} {impl}: {sample.rate:,.0f} msg/s, "
                f"max ack pending {sample.max_ack_pending}"
            )


async def run_lifecycle(url: str, results: Results) -> None:
    for rnd in range(1, results.rounds + 1):
        sample = await lifecycle_round(url, rnd)
        results.lifecycle.append(sample)
        progress(
            f"lifespan round {rnd}: startup {sample.startup * 1e3:.0f} ms, idle shutdown "
            f"{sample.idle_shutdown * 1e3:.0f} ms, busy shutdown {sample.busy_shutdown * 1e3:.0f} ms"
        )


async def run_http(url: str, results: Results, impls: list[str], sizes: Sizes) -> None:
    results.http_configs = [PLAIN]
    if not sizes.http_fast:
        results.http_skipped.append((FAST.label, "skipped in --smoke"))
    elif HAVE_UVLOOP and HAVE_HTTPTOOLS:
        results.http_configs.append(FAST)
    else:
        results.http_skipped.append((FAST.label, NOT_INSTALLED))
    for rnd in range(1, results.rounds + 1):
        for config in results.http_configs:
            for impl in rotated(impls, rnd):
                sample = await http_run(url, impl, config, rnd, sizes.http_requests, sizes.http_warmup)
                results.http.setdefault((config.label, impl), []).append(sample)
                progress(
                    f"HTTP {config.label} round {rnd} {impl}: {sample.rate:,.0f} req/s, p99 {sample.p99_ms:.1f} ms"
                )


async def run_memory(url: str, results: Results, sizes: Sizes) -> None:
    results.drain = await measure_drain(url, sizes.drain)
    progress(f"memory: draining {sizes.drain:,}: peak {results.drain.peak_over_idle_mb:+.1f} MB over idle")
    results.publish = await measure_publish(url, sizes.publish)
    progress(
        f"memory: {sizes.publish:,} publishes in {results.publish.seconds:.0f} s: "
        f"RSS {results.publish.growth_mb:+.1f} MB"
    )


async def run(url: str, results: Results, sizes: Sizes) -> None:
    impls = ["raw", "ours"] + (["faststream"] if results.faststream else [])
    await run_throughput(url, results, impls)
    await run_slow(url, results)
    await run_lifecycle(url, results)
    await run_http(url, results, impls, sizes)
    await run_memory(url, results, sizes)


def machine() -> str:
    """One line naming what the numbers were measured on."""
    server = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True, check=False)
    versions = []
    for dist in ("nats-py", "faststream", "fastapi", "uvicorn", "uvloop", "httptools"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} {NOT_INSTALLED}")
    return f"nproc {os.cpu_count()}, Python {platform.python_version()}, {server.stdout.strip()}, " + ", ".join(
        versions
    )


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per scenario (default 5)")
    parser.add_argument("--messages", type=int, default=None, help="messages per throughput and 10 ms handler run")
    parser.add_argument("--smoke", action="store_true", help="1 round of tiny sizes: a quick check that all runs")
    args = parser.parse_args()
    rounds = 1 if args.smoke else args.rounds
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    missing = [
        name
        for name, ok in (("faststream", HAVE_FASTSTREAM), ("uvloop", HAVE_UVLOOP), ("httptools", HAVE_HTTPTOOLS))
        if not ok
    ]
    if missing and not args.smoke:
        parser.error(f"a full run needs {', '.join(missing)}: pip install -e '.[bench]' (or use --smoke)")
    sizes = SMOKE if args.smoke else FULL
    counts = dict(sizes.throughput, slow=sizes.slow)
    if args.messages is not None:
        if args.messages < 1:
            parser.error("--messages must be at least 1")
        counts = dict.fromkeys(counts, args.messages)
    results = Results(sizes=counts, rounds=rounds, faststream=HAVE_FASTSTREAM, smoke=args.smoke)
    before = load()
    with NatsServer() as server:
        print(f"nats-server at {server.url}", file=sys.stderr, flush=True)
        asyncio.run(run(server.url, results, sizes))
    print(f"{machine()}; load average (1/5/15 min) {before} at the start, {load()} at the end\n")
    print(report(results))


if __name__ == "__main__":
    main()
