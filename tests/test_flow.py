"""Flow control of the pull worker: slot accounting (pure), and lanes fanning out to slow handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.aio.msg import Msg

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.flow import Slots
from jetstream_fastapi.worker import decode
from tests.conftest import WAIT


def test_nothing_is_pulled_until_threshold_slots_are_free() -> None:
    slots = Slots(concurrency=8, threshold=3)
    assert slots.to_pull(ready=0) == 8
    slots.outstanding = 8
    for _ in range(8):
        slots.delivered()
    assert slots.outstanding == 0
    assert slots.to_pull(ready=8) == 0  # all delivered, waiting for lanes
    slots.in_flight = 6
    assert slots.to_pull(ready=0) == 0  # 2 free < threshold
    slots.in_flight = 5
    assert slots.to_pull(ready=0) == 3


def test_free_slots_count_every_holder() -> None:
    slots = Slots(concurrency=10, threshold=1)
    slots.outstanding, slots.in_flight = 3, 4
    assert slots.free(ready=2) == 1
    assert slots.to_pull(ready=2) == 1
    assert slots.to_pull(ready=3) == 0


def test_an_expired_request_gives_back_its_undelivered_slots() -> None:
    slots = Slots(concurrency=10, threshold=1)
    slots.outstanding = 10
    slots.delivered()
    slots.expired(pending=9)
    assert slots.outstanding == 0
    slots.expired(pending=5)  # a late status cannot make it negative
    slots.delivered()
    assert slots.outstanding == 0


def test_decode_reads_both_ack_subject_forms() -> None:
    old = "$JS.ACK.ORDERS.workers.2.41.17.1764340000000000001.5"
    new = "$JS.ACK.hub.ACCHASH.ORDERS.workers.2.41.17.1764340000000000001.5.tok"
    for reply in (old, new):
        message = decode(Msg(_client=None, subject="orders.a", reply=reply, data=b"x", headers=None))  # type: ignore[arg-type]
        assert message.delivery is not None
        delivery = message.delivery
        assert (delivery.stream, delivery.consumer) == ("ORDERS", "workers")
        assert (delivery.sequence, delivery.attempt, delivery.timestamp_ns) == (41, 2, 1764340000000000001)
        assert (message.body, message.subject, message.headers) == (b"x", "orders.a", {})


async def test_a_burst_reaches_every_lane_when_handlers_wait(
    brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    # Lanes wake each other in a fan-out; every one of the 64 must end up running at once, or this
    # handler (which waits for all 64 to be inside) never returns.
    broker = brokers()
    await broker.connect()
    subject = f"{prefix}.burst"
    concurrency = 64
    await broker.publish_many([(subject, b"x")] * concurrency)
    inside = 0
    all_inside = asyncio.Event()

    async def handler(msg: Message) -> None:
        nonlocal inside
        inside += 1
        if inside == concurrency:
            all_inside.set()
        await all_inside.wait()

    await broker.subscribe(subject, handler, queue="burst", concurrency=concurrency, batch_size=concurrency)
    await asyncio.wait_for(all_inside.wait(), WAIT)
    await broker.wait_until_idle()
