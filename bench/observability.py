"""What observability costs: consume (no-op handler) and publish, with metrics on, tracing on, or both off.

Modes (each run in a subprocess of its own, since a process has one global tracer provider):

* ``off``: ``JetStreamBroker(..., tracing=False, metrics=False)``: the plain path, no hook at all.
* ``api``: the defaults with ``opentelemetry-api`` installed but no SDK (what an app gets before it configures
  tracing) and ``metrics=False``: the cost of tracing that records nothing.
* ``metrics``: ``tracing=False``, Prometheus metrics on (``prometheus-client`` installed).
* ``tracing``: an SDK ``TracerProvider`` with a batch processor and an exporter that drops every span,
  ``metrics=False``.
* ``both``: the SDK tracer provider and the metrics.

Rounds are interleaved (the mode that goes first rotates every round) and each run gets a fresh stream on
one embedded nats-server; connections, stream creation and the prefill are not timed. The machine may be
shared: read the spread, not one figure.

    .venv/bin/python bench/observability.py [--rounds 5] [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from common import PAYLOAD, WINDOW, Target, Timer, check_consumed, fresh_stream, prefill, rotated, spread

MODES = ("off", "api", "metrics", "tracing", "both")
SCENARIOS = ("consume", "publish")


def _configure(mode: str) -> dict[str, bool]:
    """Set up the process for ``mode``; the broker options that go with it."""
    if mode in ("tracing", "both"):
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class Dropping(SpanExporter):
            def export(self, spans: Sequence[Any]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Dropping()))
        trace.set_tracer_provider(provider)
    return {"tracing": mode in ("api", "tracing", "both"), "metrics": mode in ("metrics", "both")}


async def _consume(target: Target, n: int, options: dict[str, bool]) -> float:
    from jetstream_fastapi import JetStreamBroker

    await prefill(target, n)
    done = asyncio.Event()
    handled = 0

    async def handler(message: object) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            done.set()

    async with JetStreamBroker(target.url, **options) as broker:
        timer = Timer()
        timer.start()
        await broker.subscribe(target.subject, handler, queue="bench", batch_size=100, concurrency=100)
        await asyncio.wait_for(done.wait(), 180)
        sample = timer.stop(n)
    await check_consumed(target.url, target.stream, "bench")
    return sample.rate


async def _publish(target: Target, n: int, options: dict[str, bool]) -> float:
    from jetstream_fastapi import JetStreamBroker

    async with JetStreamBroker(target.url, **options) as broker:
        timer = Timer()
        timer.start()
        for start in range(0, n, WINDOW):
            await asyncio.gather(*(broker.publish(target.subject, PAYLOAD) for _ in range(min(WINDOW, n - start))))
        return timer.stop(n).rate


async def _child(url: str, mode: str, scenario: str, n: int) -> float:
    options = _configure(mode)
    name = f"OBS_{uuid.uuid4().hex[:10].upper()}"
    target = Target(url, name, f"obs.{name.lower()}")
    async with fresh_stream(url, name, [target.subject]):
        run = _consume if scenario == "consume" else _publish
        return await run(target, n, options)


def _run_child(url: str, mode: str, scenario: str, n: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, scenario, url, str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["rate"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--child", nargs=4, metavar=("MODE", "SCENARIO", "URL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, scenario, url, n = args.child
        print(json.dumps({"rate": asyncio.run(_child(url, mode, scenario, int(n)))}))
        return
    from jetstream_fastapi.server import NatsServer

    rates: dict[tuple[str, str], list[float]] = {(s, m): [] for s in SCENARIOS for m in MODES}
    with NatsServer() as server:
        for rnd in range(1, args.rounds + 1):
            for scenario in SCENARIOS:
                for mode in rotated(list(MODES), rnd):
                    rate = _run_child(server.url, mode, scenario, args.messages)
                    rates[scenario, mode].append(rate)
                    print(f"round {rnd} {scenario:8} {mode:8} {rate:10,.0f} msg/s", file=sys.stderr)
    print(f"\n{args.rounds} interleaved rounds, {args.messages} messages of {len(PAYLOAD)} bytes per run (msg/s)")
    print("shared machine: compare medians, read the spread\n")
    print(f"| mode | {' | '.join(SCENARIOS)} | " + " | ".join(f"{s} vs off" for s in SCENARIOS) + " |")
    print("|---" * (1 + 2 * len(SCENARIOS)) + "|")
    for mode in MODES:
        cells = [spread(rates[s, mode]) for s in SCENARIOS]
        ratios = [
            f"{statistics.median(rates[s, mode]) / statistics.median(rates[s, 'off']) - 1:+.1%}" for s in SCENARIOS
        ]
        print(f"| {mode} | {' | '.join(cells)} | {' | '.join(ratios)} |")


if __name__ == "__main__":
    main()
