"""Throughput of JetStreamBroker ("ours") against nats-py used directly ("raw"), on a local nats-server.

Run from the repository root::

    .venv/bin/python bench/bench.py [--rounds 5] [--messages N] [--smoke]

Starts its own ``nats-server -js`` (loopback, temporary store), runs each scenario for raw and ours in
interleaved rounds (odd rounds raw first, even rounds ours first), each run on a fresh stream created up
front (so no auto-provisioning is timed), and prints a markdown table: median msg/s over rounds,
min..max, the ours/raw ratio of medians and the client CPU time per message (``time.process_time``; the
server runs in another process and is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats
import nats.errors
from nats.js.api import StreamConfig

from jetstream_fastapi import JetStreamBroker
from jetstream_fastapi.driver import Message
from jetstream_fastapi.server import NatsServer

PAYLOAD = b"x" * 256
WINDOW = 256  # publishes in flight in the pipelined scenario
BATCH = 100  # pull batch in the consume scenario
RUN_TIMEOUT = 120.0  # bound on one timed run, seconds


@dataclass(frozen=True)
class Target:
    """Where one run goes: its own stream capturing exactly one subject."""

    url: str
    stream: str
    subject: str


@dataclass(frozen=True)
class Sample:
    """One timed run: messages, wall seconds, client CPU seconds."""

    messages: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.messages * 1e6


@dataclass
class Results:
    raw: list[Sample] = field(default_factory=list)
    ours: list[Sample] = field(default_factory=list)


Runner = Callable[[Target, int], Awaitable[Sample]]


class Timer:
    """Wall and process CPU time between ``start()`` and ``stop()``."""

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def stop(self, messages: int) -> Sample:
        return Sample(messages, time.perf_counter() - self._wall, time.process_time() - self._cpu)


# -- scenario 1: sequential publish, each PubAck awaited --------------------------------------------


async def raw_sequential(target: Target, n: int) -> Sample:
    nc = await nats.connect(target.url)
    try:
        js = nc.jetstream()
        timer = Timer()
        timer.start()
        for _ in range(n):
            await js.publish(target.subject, PAYLOAD)
        return timer.stop(n)
    finally:
        await nc.close()


async def ours_sequential(target: Target, n: int) -> Sample:
    async with JetStreamBroker(target.url) as broker:
        timer = Timer()
        timer.start()
        for _ in range(n):
            await broker.publish(target.subject, PAYLOAD)
        return timer.stop(n)


# -- scenario 2: pipelined publish, WINDOW in flight ------------------------------------------------


async def raw_pipelined(target: Target, n: int) -> Sample:
    nc = await nats.connect(target.url)
    try:
        js = nc.jetstream()
        timer = Timer()
        timer.start()
        for start in range(0, n, WINDOW):
            await asyncio.gather(*(js.publish(target.subject, PAYLOAD) for _ in range(min(WINDOW, n - start))))
        return timer.stop(n)
    finally:
        await nc.close()


async def ours_pipelined(target: Target, n: int) -> Sample:
    async with JetStreamBroker(target.url) as broker:
        timer = Timer()
        timer.start()
        for start in range(0, n, WINDOW):
            await asyncio.gather(*(broker.publish(target.subject, PAYLOAD) for _ in range(min(WINDOW, n - start))))
        return timer.stop(n)


async def ours_publish_many(target: Target, n: int) -> Sample:
    async with JetStreamBroker(target.url) as broker:
        timer = Timer()
        timer.start()
        for start in range(0, n, WINDOW * 8):
            batch = [(target.subject, PAYLOAD)] * min(WINDOW * 8, n - start)
            await broker.publish_many(batch, window=WINDOW)
        return timer.stop(n)


# -- scenario 3: consume with a no-op handler, durable pull consumer, batch 100 ---------------------


async def prefill(target: Target, n: int) -> None:
    """Store ``n`` messages on the target's subject (not timed)."""
    nc = await nats.connect(target.url)
    try:
        js = nc.jetstream()
        for start in range(0, n, WINDOW):
            await asyncio.gather(*(js.publish(target.subject, PAYLOAD) for _ in range(min(WINDOW, n - start))))
    finally:
        await nc.close()


async def check_consumed(url: str, stream: str, durable: str) -> None:
    """Raise unless the consumer has nothing pending and nothing unacked (not timed)."""
    nc = await nats.connect(url)
    try:
        info = await nc.jsm().consumer_info(stream, durable)
        if info.num_pending or info.num_ack_pending:
            raise RuntimeError(f"{stream}/{durable}: pending={info.num_pending} ack_pending={info.num_ack_pending}")
    finally:
        await nc.close()


async def raw_consume(target: Target, n: int) -> Sample:
    await prefill(target, n)
    nc = await nats.connect(target.url)
    try:
        js = nc.jetstream()
        timer = Timer()
        timer.start()
        psub = await js.pull_subscribe(target.subject, "bench")
        done = 0
        while done < n:
            try:
                msgs = await psub.fetch(BATCH, timeout=1)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for m in msgs:
                await m.ack()
            done += len(msgs)
        sample = timer.stop(done)
        await nc.flush()
        # Unsubscribing first keeps close/drain from waiting out the drain timeout (see the notes).
        await psub.unsubscribe()
    finally:
        await nc.close()
    await check_consumed(target.url, target.stream, "bench")
    return sample


async def ours_consume(target: Target, n: int) -> Sample:
    await prefill(target, n)
    async with JetStreamBroker(target.url) as broker:
        count = 0
        all_handled = asyncio.Event()

        async def handler(message: Message) -> None:
            nonlocal count
            count += 1
            if count >= n:
                all_handled.set()

        timer = Timer()
        timer.start()
        await broker.subscribe(target.subject, handler, queue="bench", batch_size=BATCH, concurrency=BATCH)
        await all_handled.wait()
        sample = timer.stop(count)
        await broker.wait_until_idle()
    await check_consumed(target.url, target.stream, "bench")
    return sample


# -- driver ------------------------------------------------------------------------------------------

SCENARIOS: list[tuple[str, str, Runner, Runner, int]] = [
    # key, title, raw, ours, default N
    ("seq", "sequential publish (await each PubAck)", raw_sequential, ours_sequential, 5000),
    ("pipe", f"pipelined publish ({WINDOW} in flight)", raw_pipelined, ours_pipelined, 20000),
    ("many", f"publish_many (window {WINDOW}) vs raw gather", raw_pipelined, ours_publish_many, 20000),
    ("consume", f"consume, no-op handler (durable pull, batch {BATCH})", raw_consume, ours_consume, 20000),
]


async def timed_run(url: str, key: str, rnd: int, impl: str, runner: Runner, n: int) -> Sample:
    stream = f"BENCH_{key.upper()}_R{rnd}_{impl.upper()}"
    target = Target(url, stream, f"bench.{key}.r{rnd}.{impl}")
    nc = await nats.connect(url)
    try:
        jsm = nc.jsm()
        await jsm.add_stream(StreamConfig(name=stream, subjects=[target.subject]))
        try:
            async with asyncio.timeout(RUN_TIMEOUT):
                return await runner(target, n)
        finally:
            await jsm.delete_stream(stream)
    finally:
        await nc.close()


async def run(url: str, rounds: int, sizes: dict[str, int]) -> dict[str, Results]:
    results = {key: Results() for key, *_ in SCENARIOS}
    for key, title, raw, ours, _ in SCENARIOS:
        n = sizes[key]
        for rnd in range(1, rounds + 1):
            order = [("raw", raw), ("ours", ours)]
            if rnd % 2 == 0:
                order.reverse()
            for impl, runner in order:
                sample = await timed_run(url, key, rnd, impl, runner, n)
                getattr(results[key], impl).append(sample)
                print(
                    f"  {title} round {rnd} {impl}: {sample.rate:,.0f} msg/s, {sample.cpu_us:.1f} µs CPU/msg",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def spread(samples: list[Sample]) -> str:
    rates = [s.rate for s in samples]
    median = statistics.median(rates)
    return f"{median:,.0f} ({min(rates):,.0f}..{max(rates):,.0f})"


def table(results: dict[str, Results], sizes: dict[str, int], rounds: int) -> str:
    lines = [
        "| scenario | N | rounds | raw msg/s median (min..max) | ours msg/s median (min..max) | ours/raw "
        "| raw CPU µs/msg | ours CPU µs/msg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, title, *_ in SCENARIOS:
        r = results[key]
        raw_rate = statistics.median(s.rate for s in r.raw)
        ours_rate = statistics.median(s.rate for s in r.ours)
        raw_cpu = statistics.median(s.cpu_us for s in r.raw)
        ours_cpu = statistics.median(s.cpu_us for s in r.ours)
        lines.append(
            f"| {title} | {sizes[key]} | {rounds} | {spread(r.raw)} | {spread(r.ours)} "
            f"| {ours_rate / raw_rate:.2f} | {raw_cpu:.1f} | {ours_cpu:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per scenario (default 5)")
    parser.add_argument("--messages", type=int, default=None, help="messages per run, for every scenario")
    parser.add_argument("--smoke", action="store_true", help="1 round of 500 messages: a quick check")
    args = parser.parse_args()
    rounds = 1 if args.smoke else args.rounds
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    sizes = {key: default for key, *_, default in SCENARIOS}
    if args.messages is not None or args.smoke:
        n = args.messages if args.messages is not None else 500
        if n < 1:
            parser.error("--messages must be at least 1")
        sizes = dict.fromkeys(sizes, n)
    with NatsServer() as server:
        print(f"nats-server at {server.url}", file=sys.stderr, flush=True)
        results = asyncio.run(run(server.url, rounds, sizes))
    print(table(results, sizes, rounds))


if __name__ == "__main__":
    main()
