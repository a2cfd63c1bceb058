"""The in-memory broker's ack-wait model and ``broker.faults``, on a ManualClock: nothing here sleeps."""

from __future__ import annotations

import asyncio

import pytest

from jetstream_fastapi import (
    InMemoryBroker,
    InvalidArgumentError,
    Message,
    NotConnectedError,
    PublishBatchError,
    PublishTimeoutError,
)
from jetstream_fastapi.clock import ManualClock


class Held:
    """A handler that records each delivery and holds it until released."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[bytes, int]] = []
        self.release = asyncio.Event()

    async def __call__(self, msg: Message) -> None:
        self.deliveries.append((msg.body, msg.attempt))
        await self.release.wait()


async def test_a_slow_handler_keeps_its_message_with_in_progress() -> None:
    clock = ManualClock()
    held = Held()
    async with InMemoryBroker(clock=clock, ack_wait=30.0) as broker:
        await broker.subscribe("ack.slow", held, queue="q", concurrency=2)
        await broker.publish("ack.slow", b"x")
        await clock.advance(300)
        assert held.deliveries == [(b"x", 1)]
        held.release.set()
        await broker.wait_until_idle(timeout=1.0)
        await clock.advance(300)
        assert held.deliveries == [(b"x", 1)]


async def test_max_ack_pending_holds_across_members() -> None:
    clock = ManualClock()
    first, second = Held(), Held()
    async with InMemoryBroker(clock=clock, max_ack_pending=3, concurrency=2) as broker:
        await broker.subscribe("ack.window", first, queue="q")
        await broker.subscribe("ack.window", second, queue="q")
        for n in range(6):
            await broker.publish("ack.window", str(n))
        await clock.advance(0)
        assert len(first.deliveries) + len(second.deliveries) == 3
        first.release.set()
        second.release.set()
        await broker.wait_until_idle(timeout=1.0)
        assert len(first.deliveries) + len(second.deliveries) == 6


async def test_redeliver_an_acked_message_to_prove_idempotence() -> None:
    seen: list[tuple[str | None, int, int]] = []

    async def handler(msg: Message) -> None:
        assert msg.delivery is not None
        seen.append((msg.msg_id, msg.delivery.sequence, msg.attempt))

    async with InMemoryBroker() as broker:
        await broker.subscribe("faults.orders", handler, queue="billing")
        ack = await broker.publish("faults.orders", b"x", msg_id="order-1")
        await broker.wait_until_idle()
        assert broker.faults.redeliver(ack) == 1
        await broker.wait_until_idle()
        assert seen == [("order-1", ack.seq, 1), ("order-1", ack.seq, 2)]  # as after a restart (contract test)
        with pytest.raises(LookupError, match="shipping"):
            broker.faults.redeliver(ack, queue="shipping")
        with pytest.raises(InvalidArgumentError, match="PubAck"):
            broker.faults.redeliver(ack.seq)  # type: ignore[arg-type]


async def test_a_redelivery_past_max_deliver_is_dead_lettered_without_the_handler() -> None:
    # As on a server while dead-lettering: the front enforces max_deliver, and a delivery past it goes to
    # the dead letters at once (its handler ran its allowed attempts already).
    attempts: list[int] = []

    async def handler(msg: Message) -> None:
        attempts.append(msg.attempt)

    async with InMemoryBroker(max_deliver=1) as broker:
        await broker.subscribe("faults.once", handler, queue="q")
        ack = await broker.publish("faults.once", b"x")
        await broker.wait_until_idle()
        broker.faults.redeliver(ack)
        await broker.wait_until_idle()
        assert attempts == [1]
        [letter] = await broker.list_dead_letters()
        assert (letter.error_type, letter.attempts) == ("DeliveryLimitError", 2)


async def test_redeliver_runs_the_handler_again_within_max_deliver() -> None:
    attempts: list[int] = []

    async def handler(msg: Message) -> None:
        attempts.append(msg.attempt)

    async with InMemoryBroker(max_deliver=2) as broker:
        await broker.subscribe("faults.twice", handler, queue="q")
        ack = await broker.publish("faults.twice", b"x")
        await broker.wait_until_idle()
        broker.faults.redeliver(ack)
        await broker.wait_until_idle()
        assert attempts == [1, 2]


async def test_redeliver_refuses_a_message_still_pending() -> None:
    held = Held()
    async with InMemoryBroker() as broker:
        await broker.subscribe("faults.pending", held, queue="q")
        ack = await broker.publish("faults.pending", b"x")
        with pytest.raises(LookupError, match="not handled to its end"):
            broker.faults.redeliver(ack)
        held.release.set()


async def test_failed_publishes_raise_the_real_brokers_timeout() -> None:
    async with InMemoryBroker() as broker:
        broker.faults.fail_publishes(2)
        for _ in range(2):
            with pytest.raises(PublishTimeoutError) as failed:
                await broker.publish("faults.pub", b"x", msg_id="m1")
            assert failed.value.msg_id == "m1"
        ack = await broker.publish("faults.pub", b"x", msg_id="m1")
        assert (ack.seq, ack.duplicate) == (1, False)  # the failed ones were not stored


async def test_a_failed_publish_may_have_been_stored() -> None:
    async with InMemoryBroker() as broker:
        broker.faults.fail_publishes(stored=True)
        with pytest.raises(PublishTimeoutError):
            await broker.publish("faults.doubt", b"x", msg_id="m1")
        retry = await broker.publish("faults.doubt", b"x", msg_id="m1")
        assert (retry.seq, retry.duplicate) == (1, True)


async def test_failed_publishes_count_per_message_of_a_batch() -> None:
    async with InMemoryBroker() as broker:
        broker.faults.fail_publishes(1)
        with pytest.raises(PublishBatchError) as failed:
            await broker.publish_many([("faults.batch", b"a"), ("faults.batch", b"b")])
        assert list(failed.value.errors) == [0]
        assert isinstance(failed.value.errors[0], PublishTimeoutError)
        with pytest.raises(InvalidArgumentError):
            broker.faults.fail_publishes(0)


async def test_a_lost_ack_brings_the_message_back_after_ack_wait() -> None:
    clock = ManualClock()
    attempts: list[int] = []

    async def handler(msg: Message) -> None:
        attempts.append(msg.attempt)

    async with InMemoryBroker(clock=clock, ack_wait=30.0) as broker:
        await broker.subscribe("faults.ack", handler, queue="q")
        broker.faults.lose_acks(1)
        await broker.publish("faults.ack", b"x")
        await clock.advance(29.9)
        assert attempts == [1] and not broker.idle()
        await clock.advance(0.1)
        assert attempts == [1, 2]
        await broker.wait_until_idle(timeout=1.0)


async def test_past_max_deliver_an_expired_message_is_dead_lettered() -> None:
    clock = ManualClock()
    attempts: list[int] = []

    async def handler(msg: Message) -> None:
        attempts.append(msg.attempt)

    async with InMemoryBroker(clock=clock, ack_wait=10.0, max_deliver=2) as broker:
        await broker.subscribe("faults.gone", handler, queue="q")
        broker.faults.lose_acks(2)
        await broker.publish("faults.gone", b"x")
        await clock.advance(100)
        # As on a server while dead-lettering: the third delivery is not handled but dead-lettered, so a
        # message whose handler never answers in time is not lost in silence.
        await broker.wait_until_idle(timeout=1.0)
        assert attempts == [1, 2]
        [letter] = await broker.list_dead_letters()
        assert (letter.error_type, letter.attempts) == ("DeliveryLimitError", 3)


async def test_a_dropped_connection_holds_publishes_until_restored() -> None:
    clock = ManualClock()
    async with InMemoryBroker(clock=clock) as broker:
        broker.faults.drop_connection()
        assert not broker.is_connected and not await broker.ping()
        waiting = asyncio.ensure_future(broker.publish("faults.drop", b"x"))
        await clock.advance(1.0)
        assert not waiting.done()
        broker.faults.restore_connection()
        assert (await waiting).seq == 1
        assert broker.is_connected and await broker.ping()


async def test_a_publish_times_out_while_dropped_and_is_sent_on_restore() -> None:
    clock = ManualClock()
    async with InMemoryBroker(clock=clock, publish_timeout=5.0) as broker:
        broker.faults.drop_connection()
        waiting = asyncio.ensure_future(broker.publish("faults.doubt", b"x", msg_id="m1"))
        await clock.advance(5.0)
        with pytest.raises(PublishTimeoutError):
            await waiting
        broker.faults.restore_connection()
        retry = await broker.publish("faults.doubt", b"x", msg_id="m1")
        assert (retry.seq, retry.duplicate) == (1, True)


async def test_consumers_pause_while_dropped_and_a_late_ack_still_counts() -> None:
    clock = ManualClock()
    held = Held()
    async with InMemoryBroker(clock=clock, ack_wait=30.0) as broker:
        await broker.subscribe("faults.pause", held, queue="q", concurrency=2)
        await broker.publish("faults.pause", b"a")
        await clock.advance(0)
        broker.faults.drop_connection()
        await clock.advance(60)  # the ack wait of "a" expires: no in-progress gets through
        held.release.set()  # "a" is acked, but the ack waits for the connection
        await clock.advance(0)
        assert held.deliveries == [(b"a", 1)]  # nothing is delivered while dropped
        broker.faults.restore_connection()
        await broker.wait_until_idle(timeout=1.0)
        # The held ack reaches the server before the consumer pulls again: "a" is not redelivered.
        assert held.deliveries == [(b"a", 1)]


async def test_disconnect_while_dropped_fails_held_publishes() -> None:
    clock = ManualClock()
    broker = InMemoryBroker(clock=clock)
    await broker.connect()
    broker.faults.drop_connection()
    waiting = asyncio.ensure_future(broker.publish("faults.closed", b"x"))
    await clock.advance(0)
    await broker.disconnect()
    with pytest.raises(NotConnectedError):
        await waiting
    await broker.connect()
    assert broker.is_connected and not broker.faults.connection_dropped


async def test_an_expired_message_goes_to_a_free_member_and_the_late_ack_settles_it() -> None:
    clock = ManualClock()
    held = Held()
    async with InMemoryBroker(clock=clock, ack_wait=30.0) as broker:
        await broker.subscribe("faults.expired", held, queue="q", concurrency=2)
        await broker.publish("faults.expired", b"a")
        await clock.advance(0)
        broker.faults.drop_connection()
        await clock.advance(30)  # no in-progress reaches the server: the ack wait of attempt 1 expires
        broker.faults.restore_connection()
        await clock.advance(0)
        # Redelivered to the free slot while attempt 1 still runs, as the server does.
        assert held.deliveries == [(b"a", 1), (b"a", 2)]
        held.release.set()  # both answer; the first ack settles the message, the second is ignored
        await broker.wait_until_idle(timeout=1.0)
        await clock.advance(300)
        assert held.deliveries == [(b"a", 1), (b"a", 2)]


async def test_a_batch_shares_one_deadline_while_dropped() -> None:
    clock = ManualClock()
    async with InMemoryBroker(clock=clock, publish_timeout=5.0) as broker:
        broker.faults.drop_connection()
        batch = asyncio.ensure_future(broker.publish_many([("faults.batch", b"a"), ("faults.batch", b"b")]))
        await clock.advance(5.0)
        with pytest.raises(PublishBatchError) as failed:
            await asyncio.wait_for(batch, 5.0)  # without a shared deadline the second would wait 5 s more
        assert sorted(failed.value.errors) == [0, 1]
        assert clock.now() == 5.0
