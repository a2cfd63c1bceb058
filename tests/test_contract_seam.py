"""One front over two backends: the cases where the two brokers once drifted, now run on both.

Each case here was measured to differ between ``InMemoryBroker`` and ``JetStreamBroker`` before they became
one front (``jetstream_fastapi/core/broker.py``) over two backends.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetstream_fastapi import (
    DeadLetterNotFoundError,
    HandlerTimeoutError,
    InMemoryBroker,
    JetStreamBroker,
    JetStreamError,
    Message,
    NatsServerError,
    NotConnectedError,
    PayloadTooLargeError,
    PublishBatchError,
    PublishTimeoutError,
    UnknownOptionError,
)
from jetstream_fastapi.server import NatsServer
from tests.conftest import BrokerFactory, eventually

MAX_PAYLOAD = 1024 * 1024  # nats-server's default, and the memory backend's


async def test_headers_count_toward_the_size_limit_on_both(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    body = b"x" * (MAX_PAYLOAD - 10)
    with pytest.raises(PayloadTooLargeError, match="with its headers") as caught:
        await broker.publish(f"{prefix}.big", Message(body=body, headers={"X-Note": "a header"}))
    assert caught.value.size > MAX_PAYLOAD and caught.value.limit == MAX_PAYLOAD
    # Just under the limit, headers included: stored on both.
    room = MAX_PAYLOAD - 200
    assert (await broker.publish(f"{prefix}.big", Message(body=b"x" * room, headers={"X-Note": "a"}))).seq >= 1


async def test_after_disconnect_every_call_raises_not_connected_on_both(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker()
    await broker.publish(f"{prefix}.a", b"x")
    await broker.disconnect()
    for call in (
        broker.list_dead_letters(),
        broker.replay_dead_letter(1),
        broker.publish(f"{prefix}.a", b"x"),
        broker.publish_many([(f"{prefix}.a", b"x")]),
        broker.wait_until_idle(1.0),
    ):
        with pytest.raises(NotConnectedError, match="not connected"):
            await call
    assert await broker.ping() is False


async def test_the_same_bad_call_gives_the_same_error_on_both(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    calls: list[tuple[Any, type[BaseException], str]] = [
        (broker.list_dead_letters(limit=-1), JetStreamError, "limit must be a non-negative integer, got -1"),
        (broker.replay_dead_letter(0), JetStreamError, "seq must be a positive integer, got 0"),
        (broker.replay_dead_letter(987654), DeadLetterNotFoundError, "no dead letter with sequence 987654"),
        (broker.publish(f"{prefix}.a", b"x", timeout=0), JetStreamError, "timeout must be a positive number"),
        (broker.publish_many([], window=0), JetStreamError, "window must be a positive integer, got 0"),
        (broker.ping(timeout=-1), JetStreamError, "timeout must be positive, got -1"),
    ]
    for call, kind, text in calls:
        with pytest.raises(kind) as caught:
            await call
        assert text in str(caught.value)
    with pytest.raises(LookupError):  # DeadLetterNotFoundError is a LookupError too
        await broker.replay_dead_letter(987654)


@pytest.mark.parametrize("make", [InMemoryBroker, lambda **o: JetStreamBroker("nats://127.0.0.1:1", **o)])
def test_every_documented_option_works_on_both_and_a_typo_names_the_nearest(make: Any) -> None:
    broker = make(handler_timeout=1.0, deliver_policy="new", inactive_threshold=30.0, publish_timeout=2.0)
    assert (broker.defaults.handler_timeout, broker.defaults.deliver_policy) == (1.0, "new")
    assert broker.publish_timeout == 2.0
    with pytest.raises(
        UnknownOptionError, match=r"unexpected keyword argument 'bach_size' \(did you mean batch_size\?\)"
    ):
        make(bach_size=10)
    with pytest.raises(TypeError):  # UnknownOptionError is a TypeError, as for any unknown keyword
        make(handler_timout=1.0)


def test_connect_options_are_checked_against_nats_connect() -> None:
    broker = JetStreamBroker("nats://127.0.0.1:1", name="orders-api", max_reconnect_attempts=3, token="t")
    assert broker.defaults.batch_size == 10
    with pytest.raises(UnknownOptionError, match=r"'user_credential' \(did you mean user_credentials\?\)"):
        JetStreamBroker("nats://127.0.0.1:1", user_credential="app.creds")


def test_errors_below_are_in_the_tree() -> None:
    assert issubclass(HandlerTimeoutError, JetStreamError) and issubclass(HandlerTimeoutError, TimeoutError)
    assert issubclass(NatsServerError, JetStreamError)
    assert issubclass(UnknownOptionError, TypeError) and issubclass(UnknownOptionError, ValueError)


async def test_nothing_from_nats_escapes_after_the_connection_closed(fresh_server: NatsServer) -> None:
    # nats-py closes a client for good once its reconnect attempts are spent; its ConnectionClosedError
    # used to reach the caller of publish_many.
    broker = JetStreamBroker(fresh_server.url, max_reconnect_attempts=1, reconnect_time_wait=0.05)
    await broker.connect()
    try:
        await broker.publish("closing.a", b"x")
        fresh_server.stop(remove_store=False)

        async def closed() -> None:
            try:
                await broker.publish("closing.a", b"x", timeout=0.2)
            except PublishTimeoutError as error:
                raise AssertionError("still reconnecting") from error
            except NotConnectedError:
                return  # closed for good: what the calls below meet

        await eventually(closed)  # reconnecting (a publish times out) until nats-py gives up
        for call in (
            broker.publish_many([("closing.a", b"x"), ("closing.b", b"y")]),
            broker.publish("closing.a", b"x"),
            broker.list_dead_letters(),
        ):
            with pytest.raises(JetStreamError) as caught:
                await call
            error = caught.value
            if isinstance(error, PublishBatchError):
                assert all(isinstance(e, JetStreamError) for e in error.errors.values()), error.errors
                error = next(iter(error.errors.values()))
            assert isinstance(error, NotConnectedError), repr(error)
            assert error.__cause__ is None or type(error.__cause__).__module__.startswith("nats")
    finally:
        await broker.disconnect()


async def test_consumer_states_say_the_same_on_both(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    release = asyncio.Event()
    started = asyncio.Event()

    async def hold(msg: Message) -> None:
        started.set()
        await release.wait()

    for n in range(5):
        await broker.publish(f"{prefix}.s", str(n).encode())
    await broker.subscribe(f"{prefix}.s", hold, queue="holder", concurrency=2, max_ack_pending=2)
    await asyncio.wait_for(started.wait(), 5)

    async def two_held() -> None:
        [state] = await broker.consumer_states()
        assert (state.name, state.stream) == ("holder", prefix.upper())
        assert (state.pending, state.ack_pending, state.redelivered) == (3, 2, 0)
        assert state.ack_floor_stream_seq == 0 and state.delivered_stream_seq == 2
        assert state.last_active is not None

    await eventually(two_held)
    release.set()
    await broker.wait_until_idle()
    [state] = await broker.consumer_states()
    assert (state.pending, state.ack_pending, state.ack_floor_stream_seq, state.delivered_stream_seq) == (0, 0, 5, 5)
