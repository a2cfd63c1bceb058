"""Durable request/reply (``broker.request``), on both brokers: the memory broker on its ManualClock where
time matters (nothing sleeps there), the real server in real time."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from pydantic import BaseModel

from jetstream_fastapi import (
    ConsumerRouter,
    InMemoryBroker,
    InvalidArgumentError,
    InvalidSubjectError,
    Message,
    NotConnectedError,
    PayloadTooLargeError,
    Reject,
    RemoteHandlerError,
    ReplyTimeoutError,
    RequestTimeoutError,
)
from jetstream_fastapi.clock import ManualClock
from jetstream_fastapi.core.requests import REPLY_TO
from tests.conftest import FAST_BACKOFF, BrokerFactory, eventually


class Quote(BaseModel):
    symbol: str


class Price(BaseModel):
    symbol: str
    price: float


class Answering:
    """A handler that records each delivery and answers with ``answer(msg)`` (raising what it raises)."""

    def __init__(self, answer: Any = None) -> None:
        self.messages: list[Message] = []
        self._answer = answer
        self.seen = asyncio.Event()

    async def __call__(self, msg: Message) -> object:
        self.messages.append(msg)
        self.seen.set()
        return self._answer(msg) if callable(self._answer) else self._answer

    @property
    def attempts(self) -> list[int]:
        return [m.attempt for m in self.messages]


async def _broker(make_broker: BrokerFactory, **options: Any) -> tuple[Any, ManualClock | None]:
    clock = ManualClock() if make_broker.kind == "memory" else None  # type: ignore[attr-defined]
    if clock is not None:
        options["clock"] = clock
    return await make_broker(**options), clock


def _count_replies(broker: Any) -> list[str]:
    """Record every reply the broker's backend sends (instrumentation: the reply still goes out)."""
    sent: list[str] = []
    backend = broker._backend
    original = backend.reply

    async def reply(address: str, message: Any) -> None:
        sent.append(address)
        await original(address, message)

    backend.reply = reply
    return sent


async def test_a_request_gets_the_handlers_return_value_as_its_reply(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    subject = f"{prefix}.quotes.price"
    handler = Answering(lambda msg: b"price of " + msg.body)
    await broker.subscribe(subject, handler, queue=f"{prefix}-pricer")
    reply = await broker.request(subject, Message(body=b"ACME", headers={"X-Trace": "7"}), timeout=5.0)
    assert isinstance(reply, Message)
    assert reply.body == b"price of ACME"
    [request] = handler.messages
    assert request.headers["X-Trace"] == "7" and request.headers[REPLY_TO].startswith("_INBOX.")
    assert reply.headers["Request-Msg-Id"] == request.msg_id
    assert reply.headers["Request-Stream"] == request.delivery.stream  # type: ignore[union-attr]
    assert reply.headers["Request-Sequence"] == str(request.delivery.sequence)  # type: ignore[union-attr]
    assert "Request-Error-Type" not in reply.headers
    await broker.wait_until_idle()  # acked after the reply
    again = await broker.request(subject, "second", timeout=5.0)  # str payloads, as publish takes them
    assert again.body == b"price of second"


async def test_a_typed_handler_answers_with_its_pydantic_return_value(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    router = ConsumerRouter()
    subject = f"{prefix}.quotes.price"

    @router.handle(subject, queue=f"{prefix}-pricer")
    async def price(q: Quote) -> Price:
        return Price(symbol=q.symbol, price=len(q.symbol) * 1.5)

    await router.start(broker)
    reply = await broker.request(subject, Quote(symbol="ACME"), timeout=5.0)
    assert reply.headers["Content-Type"] == "application/json"
    assert Price.model_validate_json(reply.body) == Price(symbol="ACME", price=6.0)


async def test_a_failing_handler_answers_with_an_error_after_its_last_attempt_only(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker(max_deliver=3)
    subject = f"{prefix}.quotes.price"
    sent = _count_replies(broker)

    def fail(msg: Message) -> None:
        raise RuntimeError(f"no price on attempt {msg.attempt}")

    handler = Answering(fail)
    await broker.subscribe(subject, handler, queue=f"{prefix}-pricer")
    with pytest.raises(RemoteHandlerError) as caught:
        await broker.request(subject, b"ACME", timeout=10.0)
    error = caught.value
    assert error.error_type == "RuntimeError" and error.error == "no price on attempt 3"
    assert error.attempts == 3 and error.sequence == handler.messages[0].delivery.sequence  # type: ignore[union-attr]
    assert handler.attempts == [1, 2, 3]
    assert len(sent) == 1  # the retried attempts sent nothing
    [letter] = await broker.list_dead_letters(stream=prefix.upper())  # stored before the error reply was sent
    assert letter.error_type == "RuntimeError" and letter.attempts == 3
    await broker.wait_until_idle()


@pytest.mark.parametrize("dead_letter", [True, False])
async def test_a_rejected_request_answers_with_an_error_at_once(
    make_broker: BrokerFactory, prefix: str, dead_letter: bool
) -> None:
    broker = await make_broker(dead_letters=dead_letter)
    subject = f"{prefix}.quotes.price"

    def reject(msg: Message) -> None:
        raise Reject("unknown symbol")

    handler = Answering(reject)
    await broker.subscribe(subject, handler, queue=f"{prefix}-pricer")
    with pytest.raises(RemoteHandlerError, match="Reject: unknown symbol") as caught:
        await broker.request(subject, b"NOPE", timeout=10.0)
    assert caught.value.error_type == "Reject" and caught.value.attempts == 1
    letters = await broker.list_dead_letters(stream=prefix.upper())  # stored before the error reply was sent
    assert [letter.error_type for letter in letters] == (["Reject"] if dead_letter else [])
    await broker.wait_until_idle()
    assert handler.attempts == [1]


@pytest.mark.parametrize("value", [{"price": 1.0}, object(), b"x" * 2048])
async def test_a_return_value_that_cannot_be_a_reply_is_an_error_and_a_dead_letter(
    make_broker: BrokerFactory, prefix: str, value: object
) -> None:
    options = {"max_payload": 1024} if make_broker.kind == "memory" else {}  # type: ignore[attr-defined]
    broker = await make_broker(**options)
    if make_broker.kind != "memory":  # type: ignore[attr-defined]
        value = b"x" * (broker._backend.max_payload + 1) if isinstance(value, bytes) else value
    subject = f"{prefix}.quotes.price"
    handler = Answering(value)
    await broker.subscribe(subject, handler, queue=f"{prefix}-pricer")
    with pytest.raises(RemoteHandlerError) as caught:
        await broker.request(subject, b"ACME", timeout=10.0)
    expected = "PayloadTooLargeError" if isinstance(value, bytes) else "InvalidArgumentError"
    assert caught.value.error_type == expected
    await broker.wait_until_idle()
    assert handler.attempts == [1]  # bad output is poison: never retried
    [letter] = await broker.list_dead_letters(stream=prefix.upper())
    assert letter.error_type == expected


async def test_a_value_returned_for_a_message_without_a_reply_address_is_not_sent(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker()
    subject = f"{prefix}.quotes.price"
    sent = _count_replies(broker)
    handler = Answering(object())  # would not even be a valid reply
    await broker.subscribe(subject, handler, queue=f"{prefix}-pricer")
    await broker.publish(subject, b"ACME")
    await broker.wait_until_idle()
    assert handler.attempts == [1] and sent == []
    assert await broker.list_dead_letters(stream=prefix.upper()) == []


async def test_a_request_times_out_with_a_timeout_error_and_is_still_handled_once(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker, clock = await _broker(make_broker)
    subject = f"{prefix}.quotes.price"
    if clock is None:
        with pytest.raises(ReplyTimeoutError) as caught:
            await broker.request(subject, b"ACME", timeout=0.3)  # nobody consumes it yet
    else:
        waiting = asyncio.ensure_future(broker.request(subject, b"ACME", timeout=2.0))
        await clock.advance(1.9)
        assert not waiting.done()
        await clock.advance(0.2)
        with pytest.raises(ReplyTimeoutError) as caught:
            await waiting
    error = caught.value
    assert isinstance(error, RequestTimeoutError) and isinstance(error, TimeoutError)
    assert error.ack is not None and error.ack.seq == 1 and error.msg_id
    handler = Answering(b"too late")
    await broker.subscribe(subject, handler, queue=f"{prefix}-pricer")
    await broker.wait_until_idle()  # the requester gave up: its reply goes nowhere, and the message is acked
    assert handler.attempts == [1]
    assert broker._requests.late_replies == 1 and broker._requests.waiting == 0
    assert await broker.list_dead_letters(stream=prefix.upper()) == []


async def test_a_redelivered_request_is_answered_twice_and_the_requester_keeps_the_first(prefix: str) -> None:
    clock = ManualClock()
    async with InMemoryBroker(clock=clock, ack_wait=30) as broker:
        subject = f"{prefix}.quotes.price"
        handler = Answering(lambda msg: f"answer {msg.attempt}")
        await broker.subscribe(subject, handler, queue=f"{prefix}-pricer")
        broker.faults.lose_acks(1)
        reply = await broker.request(subject, b"ACME", timeout=60.0)
        assert reply.body == b"answer 1"
        await clock.advance(31)  # the lost ack: redelivered, handled again, answered again
        await broker.wait_until_idle()
        assert handler.attempts == [1, 2]
        assert broker._requests.late_replies == 1  # the second reply found nobody waiting: dropped


async def test_a_reply_that_cannot_be_sent_is_not_acked_but_redelivered(prefix: str) -> None:
    clock = ManualClock()
    async with InMemoryBroker(clock=clock, backoff=FAST_BACKOFF) as broker:
        subject = f"{prefix}.quotes.price"
        handler = Answering(lambda msg: f"answer {msg.attempt}")
        await broker.subscribe(subject, handler, queue=f"{prefix}-pricer")
        broker.faults.fail_replies(1)
        waiting = asyncio.ensure_future(broker.request(subject, b"ACME", timeout=10.0))
        await clock.advance(1)  # past the nak's backoff
        reply = await waiting
        assert reply.body == b"answer 2" and handler.attempts == [1, 2]
        subscription = broker.subscriptions[0]
        assert subscription.counters["reply_failed"] == 1


async def test_a_request_honours_cancellation(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    subject = f"{prefix}.quotes.price"
    waiting = asyncio.ensure_future(broker.request(subject, b"ACME", timeout=30.0))

    async def stored() -> None:
        assert await broker._backend.read(prefix.upper(), 1) is not None

    await eventually(stored)  # the request is in its stream: the call waits for the reply now
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert broker._requests.waiting == 0


async def test_a_disconnect_ends_the_waiting_requests(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    waiting = asyncio.ensure_future(broker.request(f"{prefix}.quotes.price", b"ACME", timeout=30.0))

    async def stored() -> None:
        assert await broker._backend.read(prefix.upper(), 1) is not None

    await eventually(stored)
    await broker.disconnect()
    with pytest.raises(NotConnectedError, match="disconnected while waiting"):
        await waiting


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf, "2", True])
async def test_a_bad_timeout_is_refused_before_sending(make_broker: BrokerFactory, prefix: str, timeout: Any) -> None:
    broker = await make_broker()
    with pytest.raises(InvalidArgumentError, match="timeout must be a positive, finite number"):
        await broker.request(f"{prefix}.a", b"x", timeout=timeout)
    await _nothing_stored(broker, f"{prefix}.a", prefix)


@pytest.mark.parametrize(
    ("subject", "message", "headers", "error"),
    [
        ("{p}.a.*", b"x", None, InvalidSubjectError),
        ("", b"x", None, InvalidSubjectError),
        ("{p}.a", 42, None, InvalidArgumentError),
        ("{p}.a", b"x", {"Bad Name": "v"}, InvalidArgumentError),
        ("{p}.a", b"x", {"X-A": "line\nbreak"}, InvalidArgumentError),
        ("{p}.a", b"x", {"Request-Reply-To": "_INBOX.mine"}, InvalidArgumentError),
        ("{p}.a", Message(b"x", headers={"request-reply-to": "_INBOX.mine"}), None, InvalidArgumentError),
    ],
)
async def test_bad_requests_are_refused_before_sending(
    make_broker: BrokerFactory, prefix: str, subject: str, message: Any, headers: Any, error: type[Exception]
) -> None:
    broker = await make_broker()
    with pytest.raises(error):
        await broker.request(subject.format(p=prefix), message, headers=headers, timeout=1.0)
    await _nothing_stored(broker, f"{prefix}.a", prefix)


async def test_a_request_larger_than_max_payload_with_its_reply_address_is_refused(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker()
    limit = broker._backend.max_payload
    with pytest.raises(PayloadTooLargeError):
        await broker.request(f"{prefix}.a", b"x" * (limit - 60), timeout=1.0)  # fits without the address only
    await _nothing_stored(broker, f"{prefix}.a", prefix)


async def test_a_request_before_connect_is_refused(prefix: str) -> None:
    with pytest.raises(NotConnectedError):
        await InMemoryBroker().request(f"{prefix}.a", b"x", timeout=1.0)


async def _nothing_stored(broker: Any, subject: str, prefix: str) -> None:
    handler = Answering()
    await broker.subscribe(subject, handler, queue=f"{prefix}-after")
    await broker.publish(subject, b"after")
    await broker.wait_until_idle()
    assert [m.body for m in handler.messages] == [b"after"]


async def test_a_key_ordered_queue_answers_a_request_once(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    handler = Answering(lambda msg: b"ordered " + msg.subject.encode())
    await broker.subscribe(f"{prefix}.orders.*", handler, queue=f"{prefix}-proj", key_order=True, partitions=4)
    reply = await broker.request(f"{prefix}.orders.42", b"x", timeout=10.0)
    assert reply.body == f"ordered {prefix}.orders.42".encode()
    await broker.wait_until_idle()
    assert handler.attempts == [1]  # one partition's consumer handled it; the others passed it by


@pytest.mark.parametrize("address", ["", "not an address", "_INBOX.*", "_INBOX..1"])
async def test_a_message_with_a_broken_reply_address_is_handled_and_not_answered(
    make_broker: BrokerFactory, prefix: str, address: str
) -> None:
    broker = await make_broker()
    subject = f"{prefix}.quotes.price"
    sent = _count_replies(broker)
    handler = Answering(b"price")
    await broker.subscribe(subject, handler, queue=f"{prefix}-pricer")
    await broker.publish(subject, b"ACME", headers={REPLY_TO: address})  # published by hand, not by request()
    await broker.wait_until_idle()
    assert handler.attempts == [1] and sent == []
    assert await broker.list_dead_letters(stream=prefix.upper()) == []


async def test_a_request_that_is_not_acknowledged_in_time_says_so(prefix: str) -> None:
    async with InMemoryBroker() as broker:
        broker.faults.fail_publishes(1, stored=True)
        with pytest.raises(ReplyTimeoutError, match="not acknowledged") as caught:
            await broker.request(f"{prefix}.quotes.price", b"ACME", timeout=1.0)
        assert caught.value.ack is None and isinstance(caught.value.__cause__, TimeoutError)
        assert broker._requests.waiting == 0


async def test_an_error_reply_that_cannot_be_sent_still_terminates_the_request(prefix: str) -> None:
    clock = ManualClock()
    async with InMemoryBroker(clock=clock) as broker:
        subject = f"{prefix}.quotes.price"

        def reject(msg: Message) -> None:
            raise Reject("unknown symbol")

        handler = Answering(reject)
        await broker.subscribe(subject, handler, queue=f"{prefix}-pricer")
        broker.faults.fail_replies(1)
        waiting = asyncio.ensure_future(broker.request(subject, b"NOPE", timeout=5.0))
        await asyncio.wait_for(handler.seen.wait(), 5.0)
        await broker.wait_until_idle()
        assert handler.attempts == [1]  # rejected once: the dead letter holds the record, not a redelivery
        [letter] = await broker.list_dead_letters()
        assert letter.error_type == "Reject"
        await clock.advance(5)
        with pytest.raises(ReplyTimeoutError):
            await waiting
