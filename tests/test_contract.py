"""The Broker contract, run against both brokers (``make_broker`` is parametrized): they cannot drift."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from nats.js.api import StreamConfig

from jetstream_fastapi import (
    Broker,
    InvalidHandlerError,
    InvalidQueueError,
    InvalidSubjectError,
    Message,
    NoStreamError,
    NotConnectedError,
    PayloadTooLargeError,
    PubAck,
    PublishBatchError,
    Reject,
    Retry,
    Subscriber,
)
from tests.conftest import BrokerFactory


class Recorder:
    """A handler that records messages and lets a test wait until it saw ``n`` of them."""

    def __init__(self, fail_until: int = 0) -> None:
        self.messages: list[Message] = []
        self.fail_until = fail_until
        self._changed = asyncio.Event()

    async def __call__(self, msg: Message) -> None:
        self.messages.append(msg)
        self._changed.set()
        if msg.attempt <= self.fail_until:
            raise RuntimeError(f"attempt {msg.attempt} fails")

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Message]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages

    @property
    def bodies(self) -> list[bytes]:
        return [m.body for m in self.messages]


async def test_both_brokers_satisfy_the_protocol(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    assert isinstance(broker, Broker)
    subscription = await broker.subscribe(f"{prefix}.a", Recorder())
    assert isinstance(subscription, Subscriber)
    assert subscription.subject == f"{prefix}.a"
    assert subscription.queue is None


async def test_publish_returns_pub_ack_with_increasing_sequence(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    first = await broker.publish(f"{prefix}.created", b"one")
    second = await broker.publish(f"{prefix}.created", Message(body=b"two", headers={"k": "v"}))
    third = await broker.publish(f"{prefix}.other", "three")
    assert isinstance(first, PubAck)
    assert first.stream == second.stream == third.stream == prefix.upper()
    assert first.seq < second.seq < third.seq
    assert not (first.duplicate or second.duplicate or third.duplicate)


async def test_msg_id_deduplicates(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    recorder = Recorder()
    await broker.subscribe(f"{prefix}.created", recorder, queue="dedupe")
    first = await broker.publish(f"{prefix}.created", b"order-1", msg_id="order-1")
    again = await broker.publish(f"{prefix}.created", b"order-1", msg_id="order-1")
    other = await broker.publish(f"{prefix}.created", b"order-2", msg_id="order-2")
    assert again.duplicate and again.seq == first.seq
    assert not other.duplicate
    await broker.wait_until_idle()
    assert sorted(recorder.bodies) == [b"order-1", b"order-2"]
    assert {m.msg_id for m in recorder.messages} == {"order-1", "order-2"}


async def test_received_message_carries_subject_headers_and_delivery(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    recorder = Recorder()
    await broker.subscribe(f"{prefix}.*", recorder, queue="meta")
    ack = await broker.publish(f"{prefix}.created", b"body", headers={"X-Trace": "t1"})
    [msg] = await recorder.wait_for(1)
    assert (msg.subject, msg.body, msg.headers["X-Trace"]) == (f"{prefix}.created", b"body", "t1")
    assert msg.msg_id  # generated when none is given
    assert msg.delivery is not None
    assert (msg.delivery.stream, msg.delivery.sequence, msg.delivery.attempt) == (ack.stream, ack.seq, 1)
    assert msg.delivery.consumer == "meta"
    assert msg.delivery.timestamp.year >= 2024


async def test_queue_group_delivers_each_message_to_one_member(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    first, second = Recorder(), Recorder()
    await broker.subscribe(f"{prefix}.created", first, queue="workers")
    await broker.subscribe(f"{prefix}.created", second, queue="workers")
    for n in range(40):
        await broker.publish(f"{prefix}.created", str(n))
    await broker.wait_until_idle()
    handled = Counter(first.bodies + second.bodies)
    assert handled == Counter(str(n).encode() for n in range(40))


async def test_different_queues_each_get_every_message(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    billing, shipping = Recorder(), Recorder()
    await broker.subscribe(f"{prefix}.created", billing, queue="billing")
    await broker.subscribe(f"{prefix}.created", shipping, queue="shipping")
    for n in range(5):
        await broker.publish(f"{prefix}.created", str(n))
    await billing.wait_for(5)
    await shipping.wait_for(5)
    await broker.wait_until_idle()
    assert sorted(billing.bodies) == sorted(shipping.bodies) == [str(n).encode() for n in range(5)]


async def test_subscribers_without_queue_each_see_new_messages(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    await broker.publish(f"{prefix}.created", b"before")
    one, two = Recorder(), Recorder()
    await broker.subscribe(f"{prefix}.created", one)
    await broker.subscribe(f"{prefix}.created", two)
    await broker.publish(f"{prefix}.created", b"after")
    await one.wait_for(1)
    await two.wait_for(1)
    await broker.wait_until_idle()
    assert one.bodies == two.bodies == [b"after"]


async def test_durable_queue_resumes_after_resubscribe(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    recorder = Recorder()
    subscription = await broker.subscribe(f"{prefix}.created", recorder, queue="resume")
    await broker.publish(f"{prefix}.created", b"1")
    await recorder.wait_for(1)
    await broker.wait_until_idle()
    await subscription.unsubscribe()
    await broker.publish(f"{prefix}.created", b"2")  # stored while nobody consumes
    later = Recorder()
    await broker.subscribe(f"{prefix}.created", later, queue="resume")
    await later.wait_for(1)
    await broker.wait_until_idle()
    assert later.bodies == [b"2"]


async def test_wildcard_subscriptions(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    await broker.publish(f"{prefix}.seed", b"make the stream")
    star, tail = Recorder(), Recorder()
    await broker.subscribe(f"{prefix}.*.eu", star, queue="star", deliver_policy="new")
    await broker.subscribe(f"{prefix}.>", tail, queue="tail", deliver_policy="new")
    for subject in ("orders.eu", "orders.us", "orders.eu.extra"):
        await broker.publish(f"{prefix}.{subject}", subject)
    await tail.wait_for(3)
    await broker.wait_until_idle()
    assert star.bodies == [b"orders.eu"]
    assert sorted(tail.bodies) == sorted([b"orders.eu", b"orders.us", b"orders.eu.extra"])


async def test_failure_is_redelivered_with_rising_attempt(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    recorder = Recorder(fail_until=2)
    await broker.subscribe(f"{prefix}.created", recorder, queue="retry")
    await broker.publish(f"{prefix}.created", b"flaky")
    await recorder.wait_for(3)
    await broker.wait_until_idle()
    assert [m.attempt for m in recorder.messages] == [1, 2, 3]


async def test_max_deliver_bounds_attempts(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker(max_deliver=3)
    recorder = Recorder(fail_until=100)
    await broker.subscribe(f"{prefix}.created", recorder, queue="bounded")
    await broker.publish(f"{prefix}.created", b"poison")
    await broker.publish(f"{prefix}.created", b"poison-2")
    await broker.wait_until_idle()
    attempts = sorted((m.body, m.attempt) for m in recorder.messages)
    assert attempts == [
        (b"poison", 1),
        (b"poison", 2),
        (b"poison", 3),
        (b"poison-2", 1),
        (b"poison-2", 2),
        (b"poison-2", 3),
    ]


async def test_retry_exception_sets_the_delay(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    seen: list[Message] = []

    async def handler(msg: Message) -> None:
        seen.append(msg)
        if msg.attempt == 1:
            raise Retry(after=0.05, reason="inventory not ready")

    await broker.subscribe(f"{prefix}.created", handler, queue="later")
    await broker.publish(f"{prefix}.created", b"x")
    await broker.wait_until_idle()
    assert [m.attempt for m in seen] == [1, 2]


async def test_reject_is_never_redelivered(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker(max_deliver=5)
    seen: list[bytes] = []

    async def handler(msg: Message) -> None:
        seen.append(msg.body)
        if msg.body == b"poison":
            raise Reject("cannot parse")

    await broker.subscribe(f"{prefix}.created", handler, queue="strict")
    await broker.publish(f"{prefix}.created", b"poison")
    await broker.publish(f"{prefix}.created", b"good")
    await broker.wait_until_idle()
    assert sorted(seen) == [b"good", b"poison"]


async def test_concurrency_bounds_handlers_in_flight(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    running = 0
    peak = 0
    release = asyncio.Event()
    four_running = asyncio.Event()

    async def handler(msg: Message) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 4:
            four_running.set()
        await release.wait()
        running -= 1

    await broker.subscribe(f"{prefix}.created", handler, queue="bounded", concurrency=4, batch_size=10)
    for n in range(20):
        await broker.publish(f"{prefix}.created", str(n))
    await asyncio.wait_for(four_running.wait(), 10)
    release.set()
    await broker.wait_until_idle()
    assert peak == 4


async def test_bad_input_is_refused_before_the_server(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    for subject in ("", "has space", f"{prefix}.*", f"{prefix}.>"):
        with pytest.raises(InvalidSubjectError):
            await broker.publish(subject, b"x")
    with pytest.raises(InvalidQueueError):
        await broker.subscribe(f"{prefix}.created", Recorder(), queue="bad.queue")

    def not_async(msg: Message) -> None:
        return None

    with pytest.raises(InvalidHandlerError):
        await broker.subscribe(f"{prefix}.created", not_async)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'batch' \(did you mean batch_size\?\)"):
        await broker.subscribe(f"{prefix}.created", Recorder(), batch=3)  # type: ignore[call-arg]
    with pytest.raises(PayloadTooLargeError):
        await broker.publish(f"{prefix}.created", b"x" * (2 * 1024 * 1024))
    with pytest.raises(ValueError, match="header"):
        await broker.publish(f"{prefix}.created", b"x", headers={"Bad": "two\r\nlines"})
    with pytest.raises(ValueError, match="header name"):
        await broker.publish(f"{prefix}.created", b"x", headers={"Bad(name)": "x"})
    for msg_id in ("", "two\r\nlines"):
        with pytest.raises(ValueError, match="msg_id"):
            await broker.publish(f"{prefix}.created", b"x", msg_id=msg_id)


async def test_publish_before_connect_raises(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    await broker.disconnect()
    with pytest.raises(NotConnectedError):
        await broker.publish(f"{prefix}.created", b"x")
    await broker.connect()  # connect and disconnect are idempotent and reversible
    await broker.connect()
    assert (await broker.publish(f"{prefix}.created", b"x")).seq >= 1


async def test_async_context_manager(make_broker: BrokerFactory, prefix: str) -> None:
    broker: Any = await make_broker()
    await broker.disconnect()
    async with broker as connected:
        assert connected is broker
        await broker.publish(f"{prefix}.created", b"x")
    with pytest.raises(NotConnectedError):
        await broker.publish(f"{prefix}.created", b"x")


async def test_terminated_messages_become_dead_letters_and_can_be_replayed(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker(max_deliver=2)
    healed = False
    handled: list[bytes] = []

    async def handler(msg: Message) -> None:
        if msg.body == b"poison" and not healed:
            raise Reject("cannot parse")
        if msg.body == b"broken" and not healed:
            raise RuntimeError("downstream\nis down")
        handled.append(msg.body)

    await broker.subscribe(f"{prefix}.created", handler, queue="dlq")
    poison = await broker.publish(f"{prefix}.created", b"poison", headers={"X-Trace": "p1"}, msg_id="p-1")
    await broker.publish(f"{prefix}.created", b"broken")
    await broker.publish(f"{prefix}.created", b"good")
    await broker.wait_until_idle()
    assert handled == [b"good"]

    letters = {d.body: d for d in await broker.list_dead_letters(limit=10_000) if d.subject.startswith(prefix)}
    assert set(letters) == {b"poison", b"broken"}
    rejected, exhausted = letters[b"poison"], letters[b"broken"]
    assert (rejected.error_type, rejected.error, rejected.attempts) == ("Reject", "cannot parse", 1)
    assert (exhausted.error_type, exhausted.error, exhausted.attempts) == ("RuntimeError", "downstream is down", 2)
    assert (rejected.subject, rejected.stream, rejected.sequence) == (f"{prefix}.created", poison.stream, poison.seq)
    assert rejected.consumer == "dlq"
    assert rejected.headers["X-Trace"] == "p1"
    assert rejected.headers["Nats-Msg-Id"] == "p-1"

    healed = True
    await broker.replay_dead_letter(rejected.seq)
    await broker.wait_until_idle()
    assert handled == [b"good", b"poison"]
    remaining = [d.seq for d in await broker.list_dead_letters(limit=10_000)]
    assert rejected.seq not in remaining
    assert exhausted.seq in remaining


async def test_dead_letters_can_be_turned_off(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()

    async def handler(msg: Message) -> None:
        raise Reject("no")

    await broker.subscribe(f"{prefix}.created", handler, queue="nodlq", dead_letter=False)
    await broker.publish(f"{prefix}.created", b"poison")
    await broker.wait_until_idle()
    assert [d for d in await broker.list_dead_letters(limit=10_000) if d.subject.startswith(prefix)] == []


async def test_publish_many_returns_every_pub_ack_in_order(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    recorder = Recorder()
    await broker.subscribe(f"{prefix}.>", recorder, queue="many")
    batch = [(f"{prefix}.{'a' if n % 2 else 'b'}", str(n)) for n in range(600)]
    acks = await broker.publish_many(batch, window=64)
    assert [ack.seq for ack in acks] == list(range(acks[0].seq, acks[0].seq + 600))
    assert {ack.stream for ack in acks} == {prefix.upper()}
    await broker.wait_until_idle()
    assert sorted(recorder.bodies, key=int) == [str(n).encode() for n in range(600)]


async def test_publish_many_checks_everything_before_sending(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    with pytest.raises(InvalidSubjectError):
        await broker.publish_many([(f"{prefix}.ok", b"1"), (f"{prefix}.*", b"2")])
    with pytest.raises(ValueError, match="window"):
        await broker.publish_many([(f"{prefix}.ok", b"1")], window=0)
    assert (await broker.publish(f"{prefix}.ok", b"first")).seq == 1  # nothing of the batch was stored


async def test_publish_many_reports_the_failed_ones(make_broker: BrokerFactory, prefix: str) -> None:
    declared = StreamConfig(name=f"{prefix.upper()}_KNOWN", subjects=[f"{prefix}.known"])
    broker = await make_broker(auto_provision=False, streams=[declared])
    with pytest.raises(PublishBatchError) as caught:
        await broker.publish_many(
            [(f"{prefix}.known", b"1"), (f"other{prefix}.unknown", b"2"), (f"{prefix}.known", b"3")], window=2
        )
    error = caught.value
    assert [ack is not None for ack in error.acks] == [True, False, True]
    assert isinstance(error.errors[1], NoStreamError)
    assert f"other{prefix}.unknown" in str(error)


async def test_handler_timeout_cancels_and_retries(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    attempts: list[int] = []
    cancelled = asyncio.Event()

    async def handler(msg: Message) -> None:
        attempts.append(msg.attempt)
        if msg.attempt == 1:
            try:
                await asyncio.Event().wait()  # hangs until the timeout cancels it
            except asyncio.CancelledError:
                cancelled.set()
                raise

    await broker.subscribe(f"{prefix}.created", handler, queue="slow", handler_timeout=0.1)
    await broker.publish(f"{prefix}.created", b"x")
    await broker.wait_until_idle()
    assert cancelled.is_set()
    assert attempts == [1, 2]


async def test_a_queue_keeps_one_subject_while_it_runs(make_broker: BrokerFactory, prefix: str) -> None:
    # One durable consumer has one filter: a second subject on the same queue would silently move the
    # first subscription's filter, so it is refused until the first one stops.
    broker = await make_broker()
    first = await broker.subscribe(f"{prefix}.a", Recorder(), queue="q")
    second = await broker.subscribe(f"{prefix}.a", Recorder(), queue="q")  # same subject: shares the work
    with pytest.raises(ValueError, match="one filter subject"):
        await broker.subscribe(f"{prefix}.b", Recorder(), queue="q")
    await broker.subscribe(f"{prefix}.b", Recorder(), queue="other")
    await first.unsubscribe()
    await second.unsubscribe()
    moved = Recorder()
    await broker.subscribe(f"{prefix}.b", moved, queue="q")  # nothing runs on "q" now: the filter may move
    await broker.publish(f"{prefix}.b", b"x")
    await broker.wait_until_idle()
    assert [m.body for m in moved.messages] == [b"x"]


async def test_publishing_a_model_class_instead_of_an_instance_says_so(make_broker: BrokerFactory, prefix: str) -> None:
    from pydantic import BaseModel

    from jetstream_fastapi import InvalidArgumentError

    class Order(BaseModel):
        id: str

    broker = await make_broker()
    with pytest.raises(InvalidArgumentError, match=r"the class Order.*an instance: Order\(\.\.\.\)"):
        await broker.publish(f"{prefix}.orders", Order)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="the class Order"):
        await broker.publish_many([(f"{prefix}.orders", Order)])  # type: ignore[list-item]
    assert (await broker.publish(f"{prefix}.orders", Order(id="1"))).seq == 1
