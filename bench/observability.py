"""What observability costs: consume (no-op handler) and publish, with metrics on, tracing on, or both off.

Modes (each run in a subprocess of its own, since a process has one global tracer provider):

* ``off``: ``JetStreamBroker(..., tracing=False, metrics=False)``: the plain path, no hook at all.
* ``api``: the defaults with ``opentelemetry-api`` installed but no SDK (what an app gets before it configures
  tracing) and ``metrics=False``: the cost of tracing that records nothing.
* ``metrics``: ``tracing=False``, Prometheus metrics on (``prometheus-client`` installed).
* ``tracing``: an SDK ``TracerProvider`` with a batch processor and an exporter that drops every span,
  ``metrics=False``.
* ``both``: the SDK tracer provider and the metrics.

Scenarios: ``consume`` (a durable consumer on a prefilled stream, no-op handler), ``publish`` (windows of 256
publishes awaiting their PubAck), and ``hook``: the broker front's per-message call alone (the ``process``
each backend calls, on the in-memory broker with a no-op handler), which shows the hooks' own cost without
the network's noise.

Rounds are interleaved (the mode that goes first rotates every round) and each run gets a fresh stream on
one embedded nats-server; connections, stream creation and the prefill are not timed. The machine may be
shared: read the spread, not one figure.

    .venv/bin/python bench/observability.py [--rounds 5] [--messages 20000] [--modes off,metrics,...]
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

from common import PAYLOAD, WINDOW, Sample, Target, Timer, check_consumed, fresh_stream, prefill, rotated, spread

MODES = ("off", "api", "metrics", "tracing", "both")
SCENARIOS = ("consume", "publish", "hook")


def configure(mode: str) -> dict[str, bool]:
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


async def _consume(target: Target, n: int, options: dict[str, bool]) -> Sample:
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
    return sample


async def _publish(target: Target, n: int, options: dict[str, bool]) -> Sample:
    from jetstream_fastapi import JetStreamBroker

    async with JetStreamBroker(target.url, **options) as broker:
        timer = Timer()
        timer.start()
        for start in range(0, n, WINDOW):
            await asyncio.gather(*(broker.publish(target.subject, PAYLOAD) for _ in range(min(WINDOW, n - start))))
        return timer.stop(n)


async def _hook(n: int, options: dict[str, bool]) -> Sample:
    """The front's per-message work alone: the ``process`` a backend calls for each message (no-op handler,
    the in-memory broker, no I/O), ``n`` times on one message. The hooks' cost without the network's noise."""
    from jetstream_fastapi import InMemoryBroker
    from jetstream_fastapi.driver import Delivery, Message

    async def handler(message: Message) -> None:
        return None

    async with InMemoryBroker(**options) as broker:
        sub = await broker.subscribe("hook.x", handler, queue="hook")
        process = sub._processor  # the Processor the backend calls for each message
        message = Message(PAYLOAD, {"Nats-Msg-Id": "hook-1"}, "hook.x", Delivery("HOOK", 1, 1, 0, "hook"))
        timer = Timer()
        timer.start()
        for _ in range(n):
            await process(message)
        return timer.stop(n)


def _bare_spans(n: int) -> Sample:
    """Spans per second the SDK itself makes and ends (no attributes, no library code): its own cost."""
    from opentelemetry import trace

    tracer = trace.get_tracer("bench")
    timer = Timer()
    timer.start()
    for _ in range(n):
        tracer.start_span("bare").end()
    return timer.stop(n)


async def _child(url: str, mode: str, scenario: str, n: int) -> Sample:
    options = configure(mode)
    if scenario == "sdk-span":
        return _bare_spans(n)
    if scenario == "hook":
        return await _hook(10 * n, options)  # far cheaper per call: more calls for a steady figure
    name = f"OBS_{uuid.uuid4().hex[:10].upper()}"
    target = Target(url, name, f"obs.{name.lower()}")
    async with fresh_stream(url, name, [target.subject]):
        run = _consume if scenario == "consume" else _publish
        return await run(target, n, options)


def _run_child(url: str, mode: str, scenario: str, n: int) -> tuple[float, float]:
    """One run in a fresh process: messages per second (wall) and client CPU microseconds per message."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, scenario, url, str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return float(result["rate"]), float(result["cpu_us"])


def _table(modes: list[str], results: dict[tuple[str, str], list[tuple[float, float]]]) -> None:
    def rates(scenario: str, mode: str) -> list[float]:
        return [rate for rate, _ in results[scenario, mode]]

    def cpu(scenario: str, mode: str) -> list[float]:
        return [us for _, us in results[scenario, mode]]

    head = " | ".join(f"{s} msg/s | {s} CPU us/msg | {s} CPU vs off" for s in SCENARIOS)
    print(f"| mode | {head} |")
    print("|---" * (1 + 3 * len(SCENARIOS)) + "|")
    for mode in modes:
        cells = []
        for scenario in SCENARIOS:
            base = statistics.median(cpu(scenario, "off")) if "off" in modes else None
            extra = statistics.median(cpu(scenario, mode)) / base - 1 if base else None
            cells += [
                spread(rates(scenario, mode)),
                spread(cpu(scenario, mode), ".1f"),
                f"{extra:+.1%}" if extra is not None else "-",
            ]
        print(f"| {mode} | {' | '.join(cells)} |")
    if "off" in modes:
        print("\nthe hooks' own CPU per message (hook minus off), as a share of a consumed message's CPU (off):")
        consumed = statistics.median(cpu("consume", "off"))
        for mode in modes:
            extra = statistics.median(cpu("hook", mode)) - statistics.median(cpu("hook", "off"))
            print(f"- {mode}: {extra:+.2f} us = {extra / consumed:+.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    parser.add_argument("--child", nargs=4, metavar=("MODE", "SCENARIO", "URL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, scenario, url, n = args.child
        sample = asyncio.run(_child(url, mode, scenario, int(n)))
        print(json.dumps({"rate": sample.rate, "cpu_us": sample.cpu_us}))
        return
    modes = [mode for mode in MODES if mode in args.modes.split(",")]
    if not modes:
        parser.error(f"--modes: choose among {', '.join(MODES)}")
    from jetstream_fastapi.server import NatsServer

    results: dict[tuple[str, str], list[tuple[float, float]]] = {(s, m): [] for s in SCENARIOS for m in modes}
    bare: list[float] = []
    with NatsServer() as server:
        for rnd in range(1, args.rounds + 1):
            for scenario in SCENARIOS:
                for mode in rotated(modes, rnd):
                    rate, us = _run_child(server.url, mode, scenario, args.messages)
                    results[scenario, mode].append((rate, us))
                    print(
                        f"round {rnd} {scenario:8} {mode:8} {rate:10,.0f} msg/s {us:7.1f} CPU us/msg", file=sys.stderr
                    )
            bare.append(_run_child(server.url, "tracing", "sdk-span", args.messages)[1])
    print(f"\n{args.rounds} interleaved rounds, {args.messages} messages of {len(PAYLOAD)} bytes per run")
    print("median (min..max); client CPU per message is the steadier figure on a shared machine\n")
    _table(modes, results)
    print(f"\nthe SDK's own cost of one bare span (batch processor, dropping exporter): {spread(bare, '.1f')} CPU us")


if __name__ == "__main__":
    main()
