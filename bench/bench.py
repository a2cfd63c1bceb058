"""JetStreamBroker ("ours") against nats-py used directly ("raw") and FastStream 0.7.8, on a local nats-server.

Run from the repository root::

    .venv/bin/python bench/bench.py [--rounds 5] [--messages N] [--smoke] [--only SECTIONS] [--loop asyncio|uvloop]

Starts its own ``nats-server -js`` (loopback, temporary store) and runs, in this order (the section names
``--only`` takes in brackets):

* throughput (``throughput.py``): sequential publish [seq], pipelined publish [pipe], publish_many
  [many], consume with a no-op handler [consume]; raw, ours and FastStream (and for consume the
  "ceiling", a nats.go-style loop with the handler inline) in interleaved rounds (the starting
  implementation rotates);
* a 10 ms handler at concurrency 256 (``slow_handler.py``) [slow]: msg/s and the server's max ack pending;
* app startup/shutdown under ``jetstream_lifespan`` (``lifecycle.py``) [lifecycle];
* the README's HTTP publish route under uvicorn (``http_route.py``) [http]: req/s, p50/p99 latency,
  server CPU, load from ``wrk`` (or ``loadgen.py`` when wrk is missing);
* key-ordered consume against a plain queue at the same parallelism (``keyorder.py``) [keyorder]: 64
  and 1,024 keys over 16 partitions, 64 keys over 64 partitions at concurrency 16, a 1 ms handler:
  msg/s of each, the ratio against issue #15's 70%;
* scale-out (``scaleout.py``) [scale]: 1, 2 and 4 consumer processes on one queue draining one backlog,
  no-op and 1 ms handlers: aggregate msg/s, consumers' and nats-server's CPU;
* memory (``memory.py``, once, in subprocesses) [memory]: peak RSS draining a backlog, RSS across
  publish_many.

``--only seq,consume,slow`` (comma-separated) runs just those sections; by default all run.
``--loop uvloop`` runs the benchmark process and its memory subprocesses on uvloop instead of asyncio's
default loop (the HTTP scenario serves with both loops either way); the header line names the loop.

Prints markdown tables (medians over rounds, min..max, ratios of medians, CPU time per message) and
the issue #5 targets with whether each is met, for the sections that ran. A full run needs the ``bench``
extra (``pip install -e '.[bench]'``) for what the chosen sections use: FastStream for the throughput
scenarios, uvloop and httptools for HTTP, uvloop for ``--loop uvloop``; ``--smoke`` (tiny sizes, one
round, for CI) skips whatever of those is missing and says "not installed" (``--loop uvloop`` still
needs uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

from common import (
    HAVE_FASTSTREAM,
    HAVE_HTTPTOOLS,
    HAVE_UVLOOP,
    LOAD_CPU,
    LOOPS,
    NOT_INSTALLED,
    RUN_TIMEOUT,
    Sample,
    Target,
    fresh_stream,
    move_to_cpu,
    rotated,
    run_on,
)
from http_route import FAST, GENERATOR, PLAIN, ServerConfig, http_load, serving
from keyorder import CONFIGS, MODES, SMOKE_CONFIGS, key_names, keyorder_run
from lifecycle import lifecycle_round
from memory import measure_drain, measure_publish
from report import Results, report
from scaleout import HANDLERS, PROCESSES, scale_run
from slow_handler import CONCURRENCY, ours_slow, raw_slow
from throughput import SCENARIOS, Runner
from wrk_load import WRK

from jetstream_fastapi.server import NatsServer, find_nats_server

T = TypeVar("T")

THROUGHPUT = tuple(sc.key for sc in SCENARIOS)
SECTIONS = (
    *THROUGHPUT,
    "slow",
    "lifecycle",
    "http",
    "keyorder",
    "scale",
    "memory",
)  # what --only chooses from, in run order


@dataclass(frozen=True)
class Sizes:
    throughput: dict[str, int]
    slow: int  # messages through the 10 ms handler
    drain: int  # backlog drained in the memory measurement
    publish: int  # publishes in the memory measurement
    http_seconds: int  # measured load per HTTP burst
    http_bursts: int  # bursts per route and round, the routes taking turns
    http_warmup: int  # seconds of load on each route's server before its first burst
    http_fast: bool  # also serve with uvloop + httptools (when installed)
    scale: int  # backlog drained by 1, 2 and 4 consumer processes
    scale_processes: tuple[int, ...]
    scale_handlers: tuple[str, ...]
    keyorder: int  # messages per key-order run
    keyorder_configs: tuple[tuple[int, int, bool, int], ...]  # (keys, partitions, balanced, concurrency)


FULL = Sizes(
    throughput={sc.key: sc.default_n for sc in SCENARIOS},
    slow=20_000,
    drain=200_000,
    publish=1_000_000,
    http_seconds=3,
    http_bursts=3,
    http_warmup=1,
    http_fast=True,
    scale=100_000,
    scale_processes=PROCESSES,
    scale_handlers=HANDLERS,
    keyorder=10_000,
    keyorder_configs=CONFIGS,
)
SMOKE = Sizes(
    throughput=dict.fromkeys((sc.key for sc in SCENARIOS), 500),
    slow=500,
    drain=2_000,
    publish=5_000,
    http_seconds=1,
    http_bursts=1,
    http_warmup=0,
    http_fast=False,  # each HTTP run starts two processes (~1 s): the smoke serves asyncio + h11 only
    scale=1_000,
    scale_processes=(1, 2),  # each process takes ~0.5 s to start
    scale_handlers=("noop",),
    keyorder=300,
    keyorder_configs=SMOKE_CONFIGS,
)


SCALE_ROUNDS = 3  # at most: each round is 6 runs of 1-4 processes, ~1 min in all

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


async def run_throughput(url: str, results: Results, impls: list[str], only: Collection[str]) -> None:
    """The throughput scenarios named in ``only``, each in interleaved rounds of ``impls``."""
    for sc in SCENARIOS:
        if sc.key not in only:
            continue
        n = results.sizes[sc.key]
        available = {"raw": sc.raw, "ours": sc.ours, "faststream": sc.faststream, "ceiling": sc.ceiling}
        runners: dict[str, Runner] = {impl: fn for impl in [*impls, "ceiling"] if (fn := available[impl]) is not None}
        runs: dict[str, list[Sample]] = {impl: [] for impl in runners}
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


async def run_http(url: str, server_pid: int, results: Results, impls: list[str], sizes: Sizes) -> None:
    move_to_cpu(server_pid, LOAD_CPU)  # beside wrk, off uvicorn's CPU (common.PIN); moved back after
    try:
        await _run_http(url, results, impls, sizes)
    finally:
        move_to_cpu(server_pid, f"0-{(os.cpu_count() or 1) - 1}")


async def _run_http(url: str, results: Results, impls: list[str], sizes: Sizes) -> None:
    results.http_configs = [PLAIN]
    if not sizes.http_fast:
        results.http_skipped.append((FAST.label, "skipped in --smoke"))
    elif HAVE_UVLOOP and HAVE_HTTPTOOLS:
        results.http_configs.append(FAST)
    else:
        results.http_skipped.append((FAST.label, NOT_INSTALLED))
    if not WRK:
        progress(
            "warning: not using wrk (not installed: apt-get install wrk; or BENCH_LOADGEN=python): "
            "HTTP load from bench/loadgen.py"
        )
    results.http_generator = GENERATOR
    for rnd in range(1, results.rounds + 1):
        for config in results.http_configs:
            await _http_round(url, results, impls, sizes, config, rnd)


async def _http_round(
    url: str, results: Results, impls: list[str], sizes: Sizes, config: ServerConfig, rnd: int
) -> None:
    """One round: every route served at once by a process of its own, then bursts of load taking turns (the
    one that goes first rotates), so that the bursts a ratio compares ran seconds apart on warm servers."""
    async with contextlib.AsyncExitStack() as stack:
        served = {impl: await stack.enter_async_context(serving(url, impl, config, rnd)) for impl in impls}
        if sizes.http_warmup > 0:
            for impl in impls:
                await http_load(served[impl], sizes.http_warmup)
        for burst in range(sizes.http_bursts):
            for impl in rotated(impls, rnd + burst):
                sample = await http_load(served[impl], sizes.http_seconds)
                results.http.setdefault((config.label, impl), []).append(sample)
                progress(
                    f"HTTP {config.label} round {rnd} burst {burst + 1} {impl}: {sample.rate:,.0f} req/s, "
                    f"p99 {sample.p99_ms:.1f} ms"
                )


async def run_scale(url: str, server_pid: int, results: Results, sizes: Sizes, loop: str) -> None:
    """The scale-out runs, in interleaved rounds (the process counts rotate)."""
    counts = [str(p) for p in sizes.scale_processes]
    for rnd in range(1, min(results.rounds, SCALE_ROUNDS) + 1):
        for handler in sizes.scale_handlers:
            for processes in rotated(counts, rnd):
                sample = await scale_run(url, server_pid, int(processes), handler, sizes.scale, rnd, loop)
                results.scale.setdefault((handler, sample.processes), []).append(sample)
                progress(
                    f"scale-out {handler} x{processes} round {rnd}: {sample.rate:,.0f} msg/s, "
                    f"{sample.cores_busy:.2f} cores busy"
                )


async def run_keyorder(url: str, server_pid: int, results: Results, sizes: Sizes) -> None:
    """Key-ordered against plain consume, in interleaved rounds (the starting mode rotates)."""
    n = results.sizes["keyorder"]
    for rnd in range(1, results.rounds + 1):
        for keys, partitions, balanced, concurrency in sizes.keyorder_configs:
            names = key_names(keys, partitions, balanced)
            for mode in rotated(list(MODES), rnd):
                name = f"keyorder_{keys}_{partitions}{'b' if balanced else ''}_c{concurrency}_r{rnd}_{mode}"
                target = Target(url, f"BENCH_{name.upper()}", f"bench.{name}")
                async with fresh_stream(url, target.stream, [f"{target.subject}.>"]), asyncio.timeout(RUN_TIMEOUT):
                    sample = await keyorder_run(target, server_pid, mode, names, partitions, concurrency, n)
                results.keyorder.setdefault((keys, partitions, balanced, concurrency, mode), []).append(sample)
                progress(f"key order {name}: {sample.rate:,.0f} msg/s")


async def run_memory(url: str, results: Results, sizes: Sizes, loop: str) -> None:
    """Both memory measurements, each in a subprocess running on ``loop``."""
    results.drain = await measure_drain(url, sizes.drain, loop)
    progress(f"memory: draining {sizes.drain:,}: peak {results.drain.peak_over_idle_mb:+.1f} MB over idle")
    results.publish = await measure_publish(url, sizes.publish, loop)
    progress(
        f"memory: {sizes.publish:,} publishes in {results.publish.seconds:.0f} s: "
        f"RSS {results.publish.growth_mb:+.1f} MB"
    )


async def run(url: str, server_pid: int, results: Results, sizes: Sizes, only: Collection[str], loop: str) -> None:
    """The sections named in ``only``, in ``SECTIONS`` order."""
    impls = ["raw", "ours"] + (["faststream"] if results.faststream else [])
    await run_throughput(url, results, impls, only)
    if "slow" in only:
        await run_slow(url, results)
    if "lifecycle" in only:
        await run_lifecycle(url, results)
    if "http" in only:
        await run_http(url, server_pid, results, ["raw", "raw_depends", *impls[1:]], sizes)
    if "keyorder" in only:
        await run_keyorder(url, server_pid, results, sizes)
    if "scale" in only:
        await run_scale(url, server_pid, results, sizes, loop)
    if "memory" in only:
        await run_memory(url, results, sizes, loop)


def loop_label(loop: str) -> str:
    """``asyncio``, or ``uvloop`` with its version."""
    return f"uvloop {importlib.metadata.version('uvloop')}" if loop == "uvloop" else "asyncio"


def machine(loop: str) -> str:
    """One line naming what the numbers were measured on, and the event loop of the benchmark process."""
    server = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True, check=False)
    versions = []
    for dist in ("nats-py", "faststream", "fastapi", "uvicorn", "uvloop", "httptools"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} {NOT_INSTALLED}")
    return (
        f"nproc {os.cpu_count()}, Python {platform.python_version()}, {server.stdout.strip()}, "
        + ", ".join(versions)
        + f", event loop: {loop_label(loop)}"
    )


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def parse_only(parser: argparse.ArgumentParser, value: str | None) -> frozenset[str]:
    """The sections ``--only`` names (all of them without it); unknown names are a usage error."""
    if value is None:
        return frozenset(SECTIONS)
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; valid: {','.join(SECTIONS)}")
    if not names:
        parser.error(f"--only needs at least one of {','.join(SECTIONS)}")
    return frozenset(names)


def needed_packages(only: Collection[str], loop: str) -> list[str]:
    """The optional packages the chosen sections and event loop use."""
    needed = ["faststream"] if any(key in only for key in THROUGHPUT) else []
    if "http" in only or loop == "uvloop":
        needed.append("uvloop")
    if "http" in only:
        needed.append("httptools")
    return needed


def check_packages(parser: argparse.ArgumentParser, only: Collection[str], loop: str, smoke: bool) -> None:
    """Refuse a full run without what it needs (``--smoke`` skips it instead), and uvloop in any run."""
    installed = {"faststream": HAVE_FASTSTREAM, "uvloop": HAVE_UVLOOP, "httptools": HAVE_HTTPTOOLS}
    if loop == "uvloop" and not HAVE_UVLOOP:
        parser.error("--loop uvloop needs uvloop: pip install -e '.[bench]'")
    missing = [name for name in needed_packages(only, loop) if not installed[name]]
    if missing and not smoke:
        parser.error(f"a full run needs {', '.join(missing)}: pip install -e '.[bench]' (or use --smoke)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per scenario (default 5)")
    parser.add_argument("--messages", type=int, default=None, help="messages per throughput and 10 ms handler run")
    parser.add_argument("--smoke", action="store_true", help="1 round of tiny sizes: a quick check that all runs")
    parser.add_argument("--only", metavar="SECTIONS", help=f"run only these, comma-separated ({','.join(SECTIONS)})")
    parser.add_argument(
        "--loop", choices=LOOPS, default="asyncio", help="event loop of the benchmark process (default asyncio)"
    )
    args = parser.parse_args()
    rounds = 1 if args.smoke else args.rounds
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    only = parse_only(parser, args.only)
    check_packages(parser, only, args.loop, args.smoke)
    sizes = SMOKE if args.smoke else FULL
    counts = dict(sizes.throughput, slow=sizes.slow, keyorder=sizes.keyorder)
    if args.messages is not None:
        if args.messages < 1:
            parser.error("--messages must be at least 1")
        counts = dict.fromkeys(counts, args.messages)
    results = Results(sizes=counts, rounds=rounds, faststream=HAVE_FASTSTREAM, smoke=args.smoke, loop=args.loop)
    before = load()
    with NatsServer() as server:
        print(f"nats-server at {server.url}", file=sys.stderr, flush=True)
        # The server's pid, for its CPU time in /proc (NatsServer keeps its process private).
        assert server._process is not None
        run_on(args.loop, run(server.url, server._process.pid, results, sizes, only, args.loop))
    print(f"{machine(args.loop)}; load average (1/5/15 min) {before} at the start, {load()} at the end\n")
    print(report(results))


if __name__ == "__main__":
    main()
