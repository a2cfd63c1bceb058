"""A 10 ms handler at concurrency 256: throughput, and the most unacknowledged messages the server saw.

256 handlers sleeping 10 ms can settle at most 25.6k msg/s. While a run drains its backlog, a second
connection polls ``consumer_info`` every 50 ms and keeps the largest ``num_ack_pending``: delivered but
not yet acknowledged, which a consumer limited to 256 handlers should never push above 256.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from common import BATCH, Sample, Target, Timer, check_consumed, prefill
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from throughput import Counter

from jetstream_fastapi import JetStreamBroker
from jetstream_fastapi.driver import Message

CONCURRENCY = 256
HANDLER_SLEEP = 0.01
IDEAL_RATE = CONCURRENCY / HANDLER_SLEEP
POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class SlowSample(Sample):
    """A timed run, with the most unacknowledged messages the server reported and how often it was asked."""

    max_ack_pending: int
    polls: int


class AckPendingMonitor:
    """Polls the consumer's ``num_ack_pending`` every 50 ms on its own connection, keeping the maximum.

    Stopped with a flag, not by cancelling the task: on Python 3.11 a cancellation that lands as a
    ``consumer_info`` reply arrives can be swallowed inside nats-py's ``wait_for``, and the poll loop would
    then run on (and ``__aexit__`` wait) forever.
    """

    def __init__(self, target: Target, durable: str) -> None:
        self.target = target
        self.durable = durable
        self.maximum = 0
        self.polls = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AckPendingMonitor:
        nc = await nats.connect(self.target.url)
        self._task = asyncio.create_task(self._poll(nc))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._stopping = True
        await self._task

    async def _poll(self, nc: NATS) -> None:
        jsm = nc.jsm()
        try:
            while not self._stopping:
                with contextlib.suppress(nats.js.errors.NotFoundError):  # not created yet
                    info = await jsm.consumer_info(self.target.stream, self.durable)
                    self.polls += 1
                    self.maximum = max(self.maximum, info.num_ack_pending)
                await asyncio.sleep(POLL_INTERVAL)
        finally:
            await nc.close()


async def raw_slow(target: Target, n: int) -> SlowSample:
    """nats-py's ``fetch(100)`` feeding a pool of 256 handler tasks (a semaphore)."""
    await prefill(target, n)
    nc = await nats.connect(target.url)
    counter = Counter(n)
    slots = asyncio.Semaphore(CONCURRENCY)
    tasks: set[asyncio.Task[None]] = set()

    async def handle(msg: Msg) -> None:
        try:
            await asyncio.sleep(HANDLER_SLEEP)
            await msg.ack()
            counter.hit()
        finally:
            slots.release()

    try:
        js = nc.jetstream()
        async with AckPendingMonitor(target, "bench") as monitor:
            timer = Timer()
            timer.start()
            psub = await js.pull_subscribe(target.subject, "bench")
            fetched = 0
            while fetched < n:
                try:
                    msgs = await psub.fetch(BATCH, timeout=1)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                for m in msgs:
                    await slots.acquire()
                    task = asyncio.create_task(handle(m))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                fetched += len(msgs)
            await counter.done.wait()
            sample = timer.stop(counter.count)
        await nc.flush()
        await psub.unsubscribe()
    finally:
        await nc.close()
    await check_consumed(target.url, target.stream, "bench")
    return SlowSample(sample.messages, sample.seconds, sample.cpu, monitor.maximum, monitor.polls)


async def ours_slow(target: Target, n: int) -> SlowSample:
    await prefill(target, n)
    async with JetStreamBroker(target.url) as broker, AckPendingMonitor(target, "bench") as monitor:
        counter = Counter(n)

        async def handler(message: Message) -> None:
            await asyncio.sleep(HANDLER_SLEEP)
            counter.hit()

        timer = Timer()
        timer.start()
        await broker.subscribe(target.subject, handler, queue="bench", concurrency=CONCURRENCY, batch_size=CONCURRENCY)
        await counter.done.wait()
        sample = timer.stop(counter.count)
        await broker.wait_until_idle()
    await check_consumed(target.url, target.stream, "bench")
    return SlowSample(sample.messages, sample.seconds, sample.cpu, monitor.maximum, monitor.polls)
