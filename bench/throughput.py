"""Throughput scenarios: sequential publish, pipelined publish, publish_many, consume with a no-op handler.

Each runner gets a fresh stream (``Target``) and a message count, and returns one timed :class:`Sample`.
Connections are opened before the timer starts and closed after it stops. FastStream is imported inside
its runners: it is an optional extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from common import BATCH, PAYLOAD, WINDOW, Sample, Target, Timer, check_consumed, prefill
from nats.aio.msg import Msg

from jetstream_fastapi import JetStreamBroker
from jetstream_fastapi.driver import Message

Runner = Callable[[Target, int], Awaitable[Sample]]
PUBLISH_TIMEOUT = 5.0  # ours' default; FastStream's default (0.5 s) is raised to match


def faststream_broker(url: str) -> Any:
    """A FastStream ``NatsBroker`` without its per-message log lines (ours and raw log nothing per message)."""
    from faststream.nats import NatsBroker

    return NatsBroker(url, logger=None)


# -- sequential publish, each PubAck awaited ---------------------------------------------------------


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


async def faststream_sequential(target: Target, n: int) -> Sample:
    broker = faststream_broker(target.url)
    await broker.connect()
    try:
        timer = Timer()
        timer.start()
        for _ in range(n):
            # stream= makes FastStream wait for the PubAck (without it, it returns None unconfirmed).
            await broker.publish(PAYLOAD, target.subject, stream=target.stream, timeout=PUBLISH_TIMEOUT)
        return timer.stop(n)
    finally:
        await broker.stop()


# -- pipelined publish, WINDOW in flight -------------------------------------------------------------


async def windows(n: int, publish: Callable[[], Awaitable[object]]) -> None:
    for start in range(0, n, WINDOW):
        await asyncio.gather(*(publish() for _ in range(min(WINDOW, n - start))))


async def raw_pipelined(target: Target, n: int) -> Sample:
    nc = await nats.connect(target.url)
    try:
        js = nc.jetstream()
        timer = Timer()
        timer.start()
        await windows(n, lambda: js.publish(target.subject, PAYLOAD))
        return timer.stop(n)
    finally:
        await nc.close()


async def ours_pipelined(target: Target, n: int) -> Sample:
    async with JetStreamBroker(target.url) as broker:
        timer = Timer()
        timer.start()
        await windows(n, lambda: broker.publish(target.subject, PAYLOAD))
        return timer.stop(n)


async def faststream_pipelined(target: Target, n: int) -> Sample:
    broker = faststream_broker(target.url)
    await broker.connect()
    try:
        timer = Timer()
        timer.start()
        await windows(n, lambda: broker.publish(PAYLOAD, target.subject, stream=target.stream, timeout=PUBLISH_TIMEOUT))
        return timer.stop(n)
    finally:
        await broker.stop()


async def ours_publish_many(target: Target, n: int) -> Sample:
    async with JetStreamBroker(target.url) as broker:
        timer = Timer()
        timer.start()
        for start in range(0, n, WINDOW * 8):
            batch = [(target.subject, PAYLOAD)] * min(WINDOW * 8, n - start)
            await broker.publish_many(batch, window=WINDOW)
        return timer.stop(n)


# -- consume with a no-op handler, durable pull consumer, batch 100 ----------------------------------


async def raw_consume(target: Target, n: int) -> Sample:
    await prefill(target, n)
    sample = await raw_drain(target, n)
    await check_consumed(target.url, target.stream, "bench")
    return sample


async def raw_drain(target: Target, n: int) -> Sample:
    """Consume ``n`` messages of a filled stream with ``fetch(100)`` and ``ack()`` each (consumer ``bench``)."""
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
    return sample


async def ceiling_consume(target: Target, n: int) -> Sample:
    """The ceiling: a nats.go-style pull loop on nats-py's public API with the handler inline.

    One inbox subscription (``subscribe(cb=...)``); pull requests to the consumer's ``MSG.NEXT`` subject
    that keep ``BATCH`` messages asked for: a new one, for what was delivered, when fewer than half of
    them are outstanding (nats.go's ``Consume`` rule, so at most ``BATCH`` unacked as for ours); each
    message is handled inside the callback and acked with ``publish(reply, b"+ACK")``. No handler tasks,
    no slot accounting, no status handling: what the library's worker could reach at most on this API.
    """
    await prefill(target, n)
    sample = await ceiling_drain(target, n)
    await check_consumed(target.url, target.stream, "bench")
    return sample


async def ceiling_drain(target: Target, n: int) -> Sample:
    """The ceiling's loop (:func:`ceiling_consume`) over ``n`` messages of a filled stream."""
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(target.url)
    try:
        counter = Counter(n)
        inbox = nc.new_inbox()
        pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{target.stream}.bench"
        requests = {batch: b'{"batch": %d, "expires": 5000000000}' % batch for batch in range(1, BATCH + 1)}
        outstanding = 0

        def handler(data: bytes) -> None:
            counter.hit()

        async def on_msg(msg: Msg) -> None:
            nonlocal outstanding
            if not msg.reply:  # a status message: a request ended with this many of its messages undelivered
                outstanding = max(0, outstanding - int((msg.headers or {}).get("Nats-Pending-Messages", 0)))
            else:
                outstanding -= 1
                handler(msg.data)
                await nc.publish(msg.reply, b"+ACK")
            if outstanding < BATCH // 2 and counter.count < n:
                batch = BATCH - outstanding
                outstanding = BATCH
                await nc.publish(pull_subject, requests[batch], reply=inbox)

        timer = Timer()
        timer.start()
        await nc.jsm().add_consumer(target.stream, ConsumerConfig(durable_name="bench", ack_policy=AckPolicy.EXPLICIT))
        sub = await nc.subscribe(inbox, cb=on_msg)
        outstanding = BATCH
        await nc.publish(pull_subject, requests[BATCH], reply=inbox)
        await counter.done.wait()
        sample = timer.stop(counter.count)
        await nc.flush()
        await sub.unsubscribe()
    finally:
        await nc.close()
    return sample


class Counter:
    """Counts handled messages; ``done`` is set at the ``n``-th."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.n:
            self.done.set()


async def ours_consume(target: Target, n: int) -> Sample:
    await prefill(target, n)
    sample = await ours_drain(target, n)
    await check_consumed(target.url, target.stream, "bench")
    return sample


async def ours_drain(target: Target, n: int) -> Sample:
    """``broker.subscribe`` with a no-op handler over ``n`` messages of a filled stream (queue ``bench``)."""
    async with JetStreamBroker(target.url) as broker:
        counter = Counter(n)

        async def handler(message: Message) -> None:
            counter.hit()

        timer = Timer()
        timer.start()
        await broker.subscribe(target.subject, handler, queue="bench", batch_size=BATCH, concurrency=BATCH)
        await counter.done.wait()
        sample = timer.stop(counter.count)
        await broker.wait_until_idle()
    return sample


async def faststream_consume(target: Target, n: int) -> Sample:
    from faststream.nats import JStream, PullSub

    await prefill(target, n)
    broker = faststream_broker(target.url)
    counter = Counter(n)

    # declare=False: the stream exists; FastStream would otherwise (re)declare it at start. (`broker` is
    # typed Any here, so its decorator is untyped.)
    @broker.subscriber(  # type: ignore[untyped-decorator]
        target.subject,
        stream=JStream(target.stream, declare=False),
        durable="bench",
        pull_sub=PullSub(batch_size=BATCH),
    )
    async def handler(body: bytes) -> None:
        counter.hit()

    await broker.connect()
    try:
        timer = Timer()
        timer.start()
        await broker.start()  # creates the consumer and starts its fetch loop
        await counter.done.wait()
        sample = timer.stop(counter.count)
    finally:
        await broker.stop()
    await check_consumed(target.url, target.stream, "bench")
    return sample


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    raw: Runner
    ours: Runner
    faststream: Runner | None
    default_n: int
    ceiling: Runner | None = None


SCENARIOS = [
    Scenario(
        "seq", "sequential publish (await each PubAck)", raw_sequential, ours_sequential, faststream_sequential, 5000
    ),
    Scenario(
        "pipe",
        f"pipelined publish ({WINDOW} in flight, gather)",
        raw_pipelined,
        ours_pipelined,
        faststream_pipelined,
        20000,
    ),
    Scenario(
        "many", f"ours publish_many (window {WINDOW}) vs raw gather", raw_pipelined, ours_publish_many, None, 20000
    ),
    Scenario(
        "consume",
        f"consume, no-op handler (durable pull, batch {BATCH})",
        raw_consume,
        ours_consume,
        faststream_consume,
        50000,  # longer than the publish runs: at ~70k msg/s, 20,000 took 0.3 s and a hiccup moved a round by 15%
        ceiling_consume,
    ),
]
