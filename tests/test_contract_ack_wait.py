"""The memory broker's ack-wait model against a real server: the same test on both (``make_broker``).

On a real nats-server time is real, and the test waits on what the handlers record (each wait bounded);
on memory the same test runs on a :class:`ManualClock` that :meth:`Timeline.advance` moves, so nothing
sleeps. The last test pins the server behaviour the memory model copies for late answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from jetstream_fastapi import Message, Retry
from jetstream_fastapi.clock import ManualClock
from jetstream_fastapi.server import NatsServer
from tests.conftest import BrokerFactory, eventually
from tests.test_contract import Recorder

ACK_WAIT = 2.0  # short enough for the real server, long enough for the worker's in-progress under load


class Timeline:
    """Time in a contract test: the server's own clock, or a ManualClock on memory."""

    def __init__(self, kind: str) -> None:
        self.clock = ManualClock() if kind == "memory" else None

    def options(self, **options: Any) -> dict[str, Any]:
        """Broker options, with the clock on memory."""
        return {**options, "clock": self.clock} if self.clock is not None else options

    async def sleep(self, seconds: float) -> None:
        """A handler doing ``seconds`` of work."""
        if self.clock is None:
            await asyncio.sleep(seconds)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.clock.call_later(seconds, lambda: done.done() or done.set_result(None))
        await done

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: on memory, advance the clock; on the server, its time runs by itself."""
        if self.clock is not None:
            await self.clock.advance(seconds)


async def test_a_handler_slower_than_ack_wait_keeps_its_message(make_broker: BrokerFactory, prefix: str) -> None:
    # The worker sends "in progress" at half the ack wait; memory does the same, so no redelivery, although
    # a second slot is free to take one.
    timeline = Timeline(make_broker.kind)  # type: ignore[attr-defined]
    broker = await make_broker(**timeline.options(ack_wait=ACK_WAIT, concurrency=2))
    attempts: list[int] = []
    started = asyncio.Event()

    async def slow(msg: Message) -> None:
        attempts.append(msg.attempt)
        started.set()
        await timeline.sleep(2 * ACK_WAIT)

    await broker.subscribe(f"{prefix}.slow", slow, queue="slow")
    await broker.publish(f"{prefix}.slow", b"x")
    await asyncio.wait_for(started.wait(), 10)
    await timeline.advance(2 * ACK_WAIT)
    await broker.wait_until_idle(timeout=20)
    assert attempts == [1]


async def test_a_nak_delay_holds_its_max_ack_pending_slot(make_broker: BrokerFactory, prefix: str) -> None:
    # On the server a nak'd message stays pending through its delay: with max_ack_pending=1 the next
    # message waits for it.
    timeline = Timeline(make_broker.kind)  # type: ignore[attr-defined]
    broker = await make_broker(**timeline.options(max_ack_pending=1, concurrency=1))
    order: list[tuple[bytes, int]] = []

    async def handler(msg: Message) -> None:
        order.append((msg.body, msg.attempt))
        if msg.body == b"a" and msg.attempt == 1:
            raise Retry(after=0.5)

    await broker.subscribe(f"{prefix}.window", handler, queue="window")
    await broker.publish(f"{prefix}.window", b"a")
    await broker.publish(f"{prefix}.window", b"b")
    await timeline.advance(0.5)
    await broker.wait_until_idle(timeout=20)
    assert order == [(b"a", 1), (b"a", 2), (b"b", 1)]


async def test_an_unanswered_delivery_comes_back_after_ack_wait(
    make_broker: BrokerFactory, prefix: str, request: pytest.FixtureRequest
) -> None:
    # A member takes the message and never answers (on the server: a raw client that fetched it and
    # crashed; on memory: its ack is lost). After ack_wait the next member gets it with attempt 2.
    timeline = Timeline(make_broker.kind)  # type: ignore[attr-defined]
    broker = await make_broker(**timeline.options(ack_wait=ACK_WAIT))
    subject, recorder = f"{prefix}.lost", Recorder()
    if timeline.clock is None:
        await (await broker.subscribe(subject, recorder, queue="lost")).unsubscribe()  # creates the durable
        ack = await broker.publish(subject, b"x")
        server: NatsServer = request.getfixturevalue("nats_server")
        nc = await nats.connect(server.url)
        try:
            silent = await nc.jetstream().pull_subscribe_bind("lost", ack.stream)
            [taken] = await silent.fetch(1, timeout=5)
            assert taken.metadata.num_delivered == 1
            await broker.subscribe(subject, recorder, queue="lost")
            [msg] = await recorder.wait_for(1, timeout=20)
        finally:
            await nc.close()
    else:
        broker.faults.lose_acks(1)
        await broker.subscribe(subject, recorder, queue="lost")
        ack = await broker.publish(subject, b"x")
        [first] = await recorder.wait_for(1)
        assert first.attempt == 1
        await timeline.advance(ACK_WAIT)
        msg = (await recorder.wait_for(2))[1]
    assert msg.delivery is not None
    assert (msg.body, msg.attempt, msg.delivery.sequence) == (b"x", 2, ack.seq)
    await broker.wait_until_idle(timeout=20)


async def test_server_applies_a_late_answer_to_the_message(nats_server: NatsServer, prefix: str) -> None:
    # What memory_consumer copies: after an ack-wait redelivery, an answer to the first delivery still
    # settles the message (by stream sequence): a late ack acks it, a late nak redelivers it at once.
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        stream = prefix.upper()
        await js.add_stream(name=stream, subjects=[f"{prefix}.>"])
        outcome: dict[str, tuple[int, int | None]] = {}
        for answer in ("ack", "nak"):
            await js.publish(f"{prefix}.{answer}", b"x")
            config = ConsumerConfig(
                durable_name=answer, filter_subject=f"{prefix}.{answer}", ack_policy=AckPolicy.EXPLICIT, ack_wait=1.0
            )
            await js.add_consumer(stream, config)
            sub = await js.pull_subscribe_bind(answer, stream)
            [first] = await sub.fetch(1, timeout=5)
            [second] = await sub.fetch(1, timeout=10)  # the ack wait of the first delivery expired
            await (first.ack() if answer == "ack" else first.nak())
            await nc.flush()
            if answer == "ack":  # the server applies the ack after the flush has returned: wait for it

                async def acked(durable: str = answer) -> None:
                    assert (await js.consumer_info(stream, durable)).num_ack_pending == 0

                await eventually(acked)
            info = await js.consumer_info(stream, answer)
            try:
                [third] = await sub.fetch(1, timeout=0.5)
                again: int | None = third.metadata.num_delivered
            except nats.errors.TimeoutError:
                again = None
            outcome[answer] = (info.num_ack_pending, again)
            assert second.metadata.num_delivered == 2
        print(f"late answers on the server: {outcome}")
        assert outcome == {"ack": (0, None), "nak": (1, 3)}
    finally:
        await nc.close()
