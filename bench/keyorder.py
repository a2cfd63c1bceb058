"""Key-ordered consume (issue #15) against a plain queue at the same parallelism, on the JetStream broker.

Each run drains a backlog of ``N`` messages spread round-robin over ``K`` keys (``bench.keyorder.<run>.k<i>``)
with a 1 ms handler (``asyncio.sleep(0.001)``):

* **plain**: ``subscribe(queue=..., concurrency=C)``: up to ``C`` handlers at once, no order;
* **key order**: ``subscribe(queue=..., key_order=True, partitions=P, concurrency=C)``: one handler per
  partition at once (``max_ack_pending=1`` each), at most ``C`` in the instance, the messages of a key in
  stream order. ``C = P`` in the first rows; the last gives 64 keys 64 partitions at ``C = 16``, so that
  the hash's uneven spread weighs less.

The key-ordered queue's partitioned stream is created (a first subscribe, then unsubscribe) before the
backlog is published, and the run waits until the server has sourced all of it: the timed part is the
consume alone, from ``subscribe`` to the last handled message, as for the plain queue. Keys do not spread
evenly over partitions (the server's FNV-1a hash): the busiest partition holds more than ``1/P`` of the
messages and bounds the drain, so each configuration reports its share; with many keys per partition
the spread is fair.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter as Tally
from dataclasses import dataclass

import nats
from common import PAYLOAD, Sample, Target, Timer, proc_cpu_seconds, spread
from throughput import Counter

from jetstream_fastapi import JetStreamBroker
from jetstream_fastapi.core.key_order import partition_of
from jetstream_fastapi.driver import Message

HANDLER_SLEEP = 0.001
TARGET = 0.70  # key-ordered msg/s at least this share of the plain queue's (issue #15)
CHUNK = 2048  # messages per publish_many call while filling the backlog
# (keys, partitions, balanced, concurrency): the 64 keys k0..k63 as the hash spreads them; 64 keys
# picked so that each partition holds 4; 1,024 keys k0..k1023 (a fairer spread by number alone); the 64
# keys over 64 partitions with 16 handlers at once (more partitions than handlers).
CONFIGS = ((64, 16, False, 16), (64, 16, True, 16), (1024, 16, False, 16), (64, 64, False, 16))
SMOKE_CONFIGS = ((64, 16, False, 16), (64, 64, False, 16))
MODES = ("plain", "keyorder")


@dataclass(frozen=True)
class KeyOrderSample(Sample):
    """A timed drain, with the share of the messages the busiest partition held and nats-server's CPU
    seconds from the first publish of the backlog to the last ack (storing, sourcing, delivering)."""

    busiest: float
    server_cpu: float

    @property
    def server_us(self) -> float:
        return self.server_cpu / self.messages * 1e6


def key_names(keys: int, partitions: int, balanced: bool) -> list[str]:
    """``k0``, ``k1``, ...; with ``balanced``, the first names that give each partition ``keys / partitions``."""
    if not balanced:
        return [f"k{k}" for k in range(keys)]
    per, names, counts, k = keys // partitions, [], Tally[int](), 0
    while len(names) < per * partitions:
        p = partition_of(f"k{k}", partitions)
        if counts[p] < per:
            counts[p] += 1
            names.append(f"k{k}")
        k += 1
    return names


def busiest_share(names: list[str], partitions: int) -> float:
    """The share of a round-robin backlog over ``names`` that the fullest of ``partitions`` holds."""
    tally = Tally(partition_of(name, partitions) for name in names)
    return max(tally.values()) / len(names)


async def _fill(broker: JetStreamBroker, subject: str, names: list[str], n: int) -> None:
    for start in range(0, n, CHUNK):
        batch = [(subject.replace("*", names[i % len(names)]), PAYLOAD) for i in range(start, min(n, start + CHUNK))]
        for result in await broker.publish_many(batch):
            if isinstance(result, Exception):
                raise result


async def _sourced(url: str, stream: str, n: int, within: float = 60.0) -> None:
    """Wait until the partitioned stream holds the whole backlog (not timed)."""
    nc = await nats.connect(url)
    try:
        jsm = nc.jsm()
        deadline = time.monotonic() + within
        while (await jsm.stream_info(stream)).state.messages < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{stream}: the source did not copy {n} messages within {within:.0f} s")
            await asyncio.sleep(0.02)
    finally:
        await nc.close()


async def _delete_stream(url: str, name: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jsm().delete_stream(name)
    finally:
        await nc.close()


async def keyorder_run(
    target: Target, server_pid: int, mode: str, names: list[str], partitions: int, concurrency: int, n: int
) -> KeyOrderSample:
    """Drain ``n`` messages over the keys ``names``, plain or key-ordered, ``concurrency`` handlers at once."""
    subject = f"{target.subject}.*"
    counter = Counter(n)

    async def handler(message: Message) -> None:
        await asyncio.sleep(HANDLER_SLEEP)
        counter.hit()

    derived = ""
    async with JetStreamBroker(target.url) as broker:
        if mode == "keyorder":
            setup = await broker.subscribe(subject, handler, queue="bench", key_order=True, partitions=partitions)
            derived = setup.stream
            await setup.unsubscribe()
        server_before = proc_cpu_seconds(server_pid)
        await _fill(broker, subject, names, n)
        if mode == "keyorder":
            await _sourced(target.url, derived, n)
        timer = Timer()
        timer.start()
        if mode == "keyorder":
            await broker.subscribe(
                subject, handler, queue="bench", key_order=True, partitions=partitions, concurrency=concurrency
            )
        else:
            await broker.subscribe(subject, handler, queue="bench", concurrency=concurrency)
        await counter.done.wait()
        sample = timer.stop(counter.count)
        await broker.wait_until_idle(30.0)
        server_cpu = proc_cpu_seconds(server_pid) - server_before
    if mode == "keyorder":
        await _delete_stream(target.url, derived)
    share = busiest_share(names, partitions) if mode == "keyorder" else 1 / concurrency
    return KeyOrderSample(sample.messages, sample.seconds, sample.cpu, share, server_cpu)


Runs = dict[tuple[int, int, bool, int, str], list[KeyOrderSample]]  # (keys, partitions, balanced, concurrency, mode)


def _label(keys: int, partitions: int, balanced: bool, concurrency: int) -> str:
    spread = f" ({keys // partitions} per partition)" if balanced else ""
    return f"{keys} keys{spread}, {partitions} partitions, concurrency {concurrency}"


def keyorder_table(runs: Runs, n: int, rounds: int) -> str:
    """One row per configuration: both modes' msg/s and their ratio."""
    lines = [
        f"| key order, {HANDLER_SLEEP * 1e3:.0f} ms handler | N | rounds | plain queue, same concurrency, "
        "msg/s median (min..max) | key order msg/s median (min..max) | key order / plain "
        "| busiest partition's share (even) | client CPU µs/msg plain / key order "
        "| nats-server CPU µs/msg plain / key order |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in sorted({key[:4] for key in runs}):
        plain, ordered = runs[(*config, "plain")], runs[(*config, "keyorder")]
        plain_rate = statistics.median(s.rate for s in plain)
        ordered_rate = statistics.median(s.rate for s in ordered)
        lines.append(
            f"| {_label(*config)} | {n} | {rounds} | {spread([s.rate for s in plain])} "
            f"| {spread([s.rate for s in ordered])} | {ordered_rate / plain_rate:.0%} "
            f"| {ordered[0].busiest:.1%} ({1 / config[1]:.1%}) "
            f"| {statistics.median(s.cpu_us for s in plain):.0f} / {statistics.median(s.cpu_us for s in ordered):.0f} "
            f"| {statistics.median(s.server_us for s in plain):.0f} / "
            f"{statistics.median(s.server_us for s in ordered):.0f} |"
        )
    return "\n".join(lines)


def keyorder_targets(runs: Runs) -> list[tuple[str, str, bool | None]]:
    """Issue #15's target for each configuration measured."""
    rows: list[tuple[str, str, bool | None]] = []
    for config in sorted({key[:4] for key in runs}):
        plain = statistics.median(s.rate for s in runs[(*config, "plain")])
        ordered = statistics.median(s.rate for s in runs[(*config, "keyorder")])
        rows.append(
            (
                f"key order ({_label(*config)}) >= {TARGET:.0%} of a plain queue",
                f"{ordered:,.0f} / {plain:,.0f} msg/s ({ordered / plain:.0%})",
                ordered >= TARGET * plain,
            )
        )
    return rows
