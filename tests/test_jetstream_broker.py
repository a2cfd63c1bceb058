"""JetStreamBroker against a real nats-server: publish, streams, consumer configs, bad input, connect errors.

Server-side state is checked through nats-py's JetStreamManager on a connection of the test's own
(``admin``), never through the broker under test.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import AckPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from nats.js.manager import JetStreamManager

from jetstream_fastapi import (
    ConnectError,
    JetStreamBroker,
    Message,
    NoStreamError,
    NotConnectedError,
    PayloadTooLargeError,
    StreamConfigError,
)
from jetstream_fastapi.server import NatsServer
from tests.conftest import WAIT, eventually


class Collector:
    """A handler that records messages and signals when ``expected`` of them arrived."""

    def __init__(self, expected: int) -> None:
        self.messages: list[Message] = []
        self.expected = expected
        self.done = asyncio.Event()

    async def __call__(self, msg: Message) -> None:
        self.messages.append(msg)
        if len(self.messages) >= self.expected:
            self.done.set()

    async def wait(self, timeout: float = WAIT) -> list[Message]:
        await asyncio.wait_for(self.done.wait(), timeout)
        return self.messages


def unused_port() -> socket.socket:
    """A loopback port bound but not listening (connections are refused); keep the socket to hold the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


# -- publish --------------------------------------------------------------------------------------


async def test_publish_returns_puback_with_increasing_seq(brokers: Callable[..., JetStreamBroker], prefix: str) -> None:
    broker = brokers()
    await broker.connect()
    acks = [await broker.publish(f"{prefix}.created", f"m{i}") for i in range(5)]
    assert [ack.stream for ack in acks] == [prefix.upper()] * 5
    assert [ack.seq for ack in acks] == list(range(1, 6))
    assert not any(ack.duplicate for ack in acks)


async def test_duplicate_msg_id_returns_first_seq(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    first = await broker.publish(f"{prefix}.a", b"one", msg_id="order-1")
    other = await broker.publish(f"{prefix}.a", b"two", msg_id="order-2")
    again = await broker.publish(f"{prefix}.a", b"one again", msg_id="order-1")
    assert not first.duplicate
    assert not other.duplicate
    assert again.duplicate
    assert again.seq == first.seq
    assert again.stream == first.stream
    info = await admin.stream_info(prefix.upper())
    assert info.state.messages == 2


async def test_publish_without_msg_id_sets_a_generated_one(
    brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    got = Collector(3)
    await broker.subscribe(f"{prefix}.>", got)
    await broker.publish(f"{prefix}.x", b"a")
    await broker.publish(f"{prefix}.x", Message(body=b"b", headers={"X-Trace": "t1"}))
    await broker.publish(f"{prefix}.x", b"c", msg_id="mine")
    messages = sorted(await got.wait(), key=lambda m: m.body)
    generated = [m.msg_id for m in messages[:2]]
    assert all(generated), generated
    assert generated[0] != generated[1]
    assert messages[1].headers["X-Trace"] == "t1"
    assert messages[2].msg_id == "mine"
    # A second broker generates ids that cannot collide with the first's (else the server would drop them).
    other = brokers()
    await other.connect()
    ack = await other.publish(f"{prefix}.x", b"d")
    assert not ack.duplicate


async def test_auto_provisioned_stream_is_limits_file_named_after_first_token(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    ack = await broker.publish(f"{prefix}.orders.created", b"{}")
    assert ack.stream == prefix.upper()
    config = (await admin.stream_info(prefix.upper())).config
    assert config.retention == RetentionPolicy.LIMITS
    assert config.storage == StorageType.FILE
    assert sorted(config.subjects or []) == sorted([prefix, f"{prefix}.>"])
    # The bare token is captured too.
    assert (await broker.publish(prefix, b"bare")).stream == prefix.upper()


async def test_auto_provisioned_on_subscribe(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    got = Collector(1)
    await broker.subscribe(f"{prefix}.jobs", got, queue="w")
    info = await admin.stream_info(prefix.upper())
    assert info.config.retention == RetentionPolicy.LIMITS
    await broker.publish(f"{prefix}.jobs", b"x")
    assert [m.body for m in await got.wait()] == [b"x"]


async def test_two_queues_on_one_subject_each_get_every_message(
    brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    subject = f"{prefix}.events"
    billing, shipping = Collector(10), Collector(10)
    await broker.subscribe(subject, billing, queue="billing")
    await broker.subscribe(subject, shipping, queue="shipping")
    sent = [f"e{i}".encode() for i in range(10)]
    for body in sent:
        await broker.publish(subject, body)
    assert sorted(m.body for m in await billing.wait()) == sorted(sent)
    assert sorted(m.body for m in await shipping.wait()) == sorted(sent)
    assert {m.delivery.consumer for m in billing.messages if m.delivery} == {"billing"}
    assert {m.delivery.consumer for m in shipping.messages if m.delivery} == {"shipping"}


async def test_same_queue_splits_messages_exactly_once(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    """Two instances (two brokers) sharing a queue: each message handled once, and both take a share."""
    subject = f"{prefix}.jobs"
    gate = asyncio.Event()
    handled: list[tuple[str, int]] = []
    first_four = asyncio.Event()
    all_done = asyncio.Event()
    total = 4 + 30

    def handler_for(name: str) -> Callable[[Message], Any]:
        async def handle(msg: Message) -> None:
            assert msg.delivery is not None
            handled.append((name, msg.delivery.sequence))
            if len(handled) == 4:
                first_four.set()
            await gate.wait()
            if len(handled) >= total:
                all_done.set()

        return handle

    one, two = brokers(), brokers()
    await one.connect()
    await two.connect()
    # concurrency=2: with the gate closed, one instance can hold only 2 of the first 4 messages.
    await one.subscribe(subject, handler_for("one"), queue="workers", concurrency=2)
    await two.subscribe(subject, handler_for("two"), queue="workers", concurrency=2)
    for i in range(4):
        await one.publish(subject, f"j{i}")
    await asyncio.wait_for(first_four.wait(), WAIT)
    assert sorted(name for name, _ in handled) == ["one", "one", "two", "two"]
    gate.set()
    for i in range(4, total):
        await one.publish(subject, f"j{i}")
    await asyncio.wait_for(all_done.wait(), WAIT)
    sequences = [seq for _, seq in handled]
    assert sorted(sequences) == list(range(1, total + 1))  # every message, none twice

    async def settled() -> None:
        info = await admin.consumer_info(prefix.upper(), "workers")
        assert info.num_ack_pending == 0
        assert info.num_pending == 0
        assert info.delivered is not None
        assert info.delivered.consumer_seq == total

    await eventually(settled)


# -- streams made by operations, declared streams ------------------------------------------------


@pytest.mark.parametrize("auto_provision", [True, False])
async def test_existing_stream_from_operations_is_used(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str, auto_provision: bool
) -> None:
    name = f"OPS_{prefix.upper()}"
    await admin.add_stream(StreamConfig(name=name, subjects=[f"ops.{prefix}.>"]))
    broker = brokers(auto_provision=auto_provision)
    await broker.connect()
    got = Collector(2)
    await broker.subscribe(f"ops.{prefix}.>", got, queue="audit")
    ack = await broker.publish(f"ops.{prefix}.user.created", b"u1")
    assert ack.stream == name
    assert (await broker.publish(f"ops.{prefix}.user.deleted", b"u2")).stream == name
    assert [m.body for m in await got.wait()] == [b"u1", b"u2"]
    assert all(m.delivery is not None and m.delivery.stream == name for m in got.messages)
    # Nothing was provisioned next to it.
    with pytest.raises(NotFoundError):
        await admin.stream_info("OPS")
    assert (await admin.consumer_info(name, "audit")).config.filter_subject == f"ops.{prefix}.>"


async def test_no_auto_provision_and_uncaptured_subject_raises_no_stream_error(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers(auto_provision=False)
    await broker.connect()
    subject = f"{prefix}.nowhere"
    with pytest.raises(NoStreamError) as publish_error:
        await broker.publish(subject, b"x")
    assert subject in str(publish_error.value)
    assert publish_error.value.subject == subject

    async def handler(msg: Message) -> None:
        pass

    with pytest.raises(NoStreamError) as subscribe_error:
        await broker.subscribe(subject, handler, queue="q")
    assert subject in str(subscribe_error.value)
    with pytest.raises(NotFoundError):
        await admin.stream_info(prefix.upper())


async def test_declared_streams_are_created_at_connect(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    name = f"DECL_{prefix.upper()}"
    declared = StreamConfig(name=name, subjects=[f"{prefix}.orders.>"], max_msgs=100, storage=StorageType.MEMORY)
    broker = brokers(streams=[declared], auto_provision=False)
    with pytest.raises(NotFoundError):
        await admin.stream_info(name)
    await broker.connect()
    config = (await admin.stream_info(name)).config
    assert config.max_msgs == 100
    assert config.storage == StorageType.MEMORY
    assert config.subjects == [f"{prefix}.orders.>"]
    assert (await broker.publish(f"{prefix}.orders.new", b"o")).stream == name
    # Connecting again with the same declaration changes nothing and does not fail.
    again = brokers(streams=[declared])
    await again.connect()


async def test_declared_stream_differing_on_server_raises_at_connect(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    name = f"DECL_{prefix.upper()}"
    await admin.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"], max_msgs=100))
    broker = brokers(streams=[StreamConfig(name=name, subjects=[f"{prefix}.>"], max_msgs=200)])
    with pytest.raises(StreamConfigError) as error:
        await broker.connect()
    assert "max_msgs" in str(error.value)
    assert error.value.differences == {"max_msgs": (200, 100)}
    assert not broker.is_connected
    with pytest.raises(NotConnectedError):
        await broker.publish(f"{prefix}.x", b"x")
    assert (await admin.stream_info(name)).config.max_msgs == 100  # left alone


async def test_declared_stream_differing_is_updated_when_asked(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    name = f"DECL_{prefix.upper()}"
    await admin.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"], max_msgs=100))
    broker = brokers(
        streams=[StreamConfig(name=name, subjects=[f"{prefix}.>"], max_msgs=200)], stream_mismatch="update"
    )
    await broker.connect()
    assert (await admin.stream_info(name)).config.max_msgs == 200
    assert (await broker.publish(f"{prefix}.x", b"x")).stream == name


# -- consumer configuration -----------------------------------------------------------------------


async def test_durable_consumer_config_comes_from_options(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    # Without dead letters the server enforces max_deliver; with them it is unlimited on the server and
    # the worker dead-letters a message past it (so that a refused dead letter never loses the message).
    broker = brokers(ack_wait=11, max_deliver=4, max_ack_pending=40, dead_letters=False)

    async def handler(msg: Message) -> None:
        pass

    await broker.connect()
    await broker.subscribe(f"{prefix}.a", handler, queue="defaults")
    await broker.subscribe(f"{prefix}.b.*", handler, queue="custom", ack_wait=7, max_deliver=3, max_ack_pending=50)
    defaults = (await admin.consumer_info(prefix.upper(), "defaults")).config
    assert defaults.durable_name == "defaults"
    assert defaults.ack_policy == AckPolicy.EXPLICIT
    assert defaults.filter_subject == f"{prefix}.a"
    assert defaults.ack_wait == pytest.approx(11)
    assert defaults.max_deliver == 4
    assert defaults.max_ack_pending == 40
    custom = (await admin.consumer_info(prefix.upper(), "custom")).config
    assert custom.durable_name == "custom"
    assert custom.ack_policy == AckPolicy.EXPLICIT
    assert custom.filter_subject == f"{prefix}.b.*"
    assert custom.ack_wait == pytest.approx(7)
    assert custom.max_deliver == 3
    assert custom.max_ack_pending == 50
    await broker.subscribe(f"{prefix}.c", handler, queue="dead-lettering", max_deliver=3, dead_letter=True)
    assert (await admin.consumer_info(prefix.upper(), "dead-lettering")).config.max_deliver == -1


async def test_resubscribing_with_other_options_reconciles_the_durable(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    got = Collector(1)
    sub = await broker.subscribe(f"{prefix}.a", got, queue="w", ack_wait=5)
    assert (await admin.consumer_info(prefix.upper(), "w")).config.ack_wait == pytest.approx(5)
    await sub.unsubscribe()
    assert (await admin.consumer_info(prefix.upper(), "w")).config.ack_wait == pytest.approx(5)  # durable stays
    sub = await broker.subscribe(f"{prefix}.a", got, queue="w", ack_wait=8)  # only ack_wait differs
    assert (await admin.consumer_info(prefix.upper(), "w")).config.ack_wait == pytest.approx(8)
    await sub.unsubscribe()
    await broker.subscribe(
        f"{prefix}.a", got, queue="w", ack_wait=8, max_deliver=2, max_ack_pending=20, dead_letter=False
    )
    info = (await admin.consumer_info(prefix.upper(), "w")).config
    assert info.ack_wait == pytest.approx(8)
    assert info.max_deliver == 2
    assert info.max_ack_pending == 20
    await broker.publish(f"{prefix}.a", b"after update")
    assert [m.body for m in await got.wait()] == [b"after update"]


async def test_ephemeral_consumer_is_deleted_on_unsubscribe_durable_survives_disconnect(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    got = Collector(1)
    ephemeral = await broker.subscribe(f"{prefix}.a", got)
    assert ephemeral.queue is None
    name = ephemeral.consumer_name
    info = await admin.consumer_info(prefix.upper(), name)
    assert info.config.durable_name is None
    await broker.publish(f"{prefix}.a", b"x")
    await got.wait()
    await ephemeral.unsubscribe()
    with pytest.raises(NotFoundError):
        await admin.consumer_info(prefix.upper(), name)

    await broker.subscribe(f"{prefix}.a", got, queue="keeper")
    await broker.disconnect()
    assert (await admin.consumer_info(prefix.upper(), "keeper")).config.durable_name == "keeper"


# -- bad input --------------------------------------------------------------------------------------


async def test_publish_and_subscribe_before_connect_and_after_disconnect(
    brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    broker = brokers()

    async def handler(msg: Message) -> None:
        pass

    with pytest.raises(NotConnectedError):
        await broker.publish(f"{prefix}.a", b"x")
    with pytest.raises(NotConnectedError):
        await broker.subscribe(f"{prefix}.a", handler, queue="q")
    await broker.connect()
    await broker.publish(f"{prefix}.a", b"x")
    await broker.disconnect()
    with pytest.raises(NotConnectedError):
        await broker.publish(f"{prefix}.a", b"x")


@pytest.fixture(scope="module")
def small_payload_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = Path(tmp_path_factory.mktemp("conf")) / "small.conf"
    config.write_text("max_payload: 1024\n")
    with NatsServer(args=["-c", str(config)]) as server:
        yield server


async def test_payload_larger_than_server_max_payload(
    brokers: Callable[..., JetStreamBroker], small_payload_server: NatsServer, prefix: str
) -> None:
    broker = brokers(small_payload_server.url)
    await broker.connect()
    with pytest.raises(PayloadTooLargeError) as error:
        await broker.publish(f"{prefix}.big", b"x" * 1025)
    assert error.value.limit == 1024
    assert error.value.size > 1025  # the body plus the Nats-Msg-Id header
    assert f"{prefix}.big" in str(error.value)
    ack = await broker.publish(f"{prefix}.big", b"x" * 512)
    assert ack.seq == 1
    assert broker.is_connected


async def test_payload_at_the_limit_counts_headers(
    brokers: Callable[..., JetStreamBroker], small_payload_server: NatsServer, prefix: str
) -> None:
    """The server's limit covers headers + body: a body of exactly max_payload plus the msg id header is too
    large, and must fail cleanly instead of making the server drop the connection."""
    # No tracing: a tracer provider another test set would add a traceparent header to every publish.
    broker = brokers(small_payload_server.url, publish_timeout=2, tracing=False)
    await broker.connect()
    with pytest.raises(PayloadTooLargeError):
        await broker.publish(f"{prefix}.big", b"x" * 1024)
    with pytest.raises(PayloadTooLargeError):
        await broker.publish(f"{prefix}.big", b"x" * 1000, headers={"X-Pad": "p" * 100})
    assert broker.is_connected
    ack = await broker.publish(f"{prefix}.big", b"x" * 512)
    assert ack.seq == 1
    # Exactly at the limit: "NATS/1.0\r\n" + "Nats-Msg-Id: m\r\n" + "\r\n" is 28 bytes.
    with pytest.raises(PayloadTooLargeError):
        await broker.publish(f"{prefix}.big", b"x" * 997, msg_id="m")
    ack = await broker.publish(f"{prefix}.big", b"x" * 996, msg_id="m")
    assert ack.seq == 2
    assert broker.is_connected


async def test_default_max_payload_is_enforced(brokers: Callable[..., JetStreamBroker], prefix: str) -> None:
    broker = brokers()
    await broker.connect()
    with pytest.raises(PayloadTooLargeError):
        await broker.publish(f"{prefix}.big", b"x" * (1024 * 1024 + 1))


# -- connect errors and secrets -------------------------------------------------------------------


async def test_connect_to_nothing_fails_fast(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="jetstream_fastapi")
    with unused_port() as sock:
        port = sock.getsockname()[1]
        broker = JetStreamBroker(f"nats://127.0.0.1:{port}", connect_timeout=1)
        started = time.monotonic()
        with pytest.raises(ConnectError) as error:
            await broker.connect()
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    assert f"127.0.0.1:{port}" in str(error.value)
    assert not broker.is_connected
    with pytest.raises(NotConnectedError):
        await broker.publish("x.y", b"x")
    # A first connect that failed is not a lost connection being retried in the background.
    assert "reconnecting" not in caplog.text


async def test_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-Pa55word"
    with unused_port() as sock:
        url = f"nats://alice:{secret}@127.0.0.1:{sock.getsockname()[1]}"
        broker = JetStreamBroker(url, connect_timeout=1)
        assert secret not in repr(broker)
        with pytest.raises(ConnectError) as error:
            await broker.connect()
    assert secret not in str(error.value)
    assert secret not in repr(error.value)
    assert secret not in repr(broker)
    assert secret not in caplog.text
    for record in caplog.records:
        assert secret not in record.getMessage()


async def test_refused_credentials_never_show(caplog: pytest.LogCaptureFixture) -> None:
    """A real server requiring a password: a wrong one is a ConnectError without either password in it."""
    caplog.set_level(logging.DEBUG)
    right, wrong = "right-Pa55word", "wrong-Pa55word"
    with NatsServer(args=["--user", "alice", "--pass", right]) as server:
        host = server.url.removeprefix("nats://")
        broker = JetStreamBroker(f"nats://alice:{wrong}@{host}", connect_timeout=1)
        started = time.monotonic()
        with pytest.raises(ConnectError) as error:
            await broker.connect()
        assert time.monotonic() - started < 2.5
        good = JetStreamBroker(f"nats://alice:{right}@{host}", connect_timeout=2)
        await good.connect()
        try:
            assert right not in repr(good)
            assert (await good.publish("auth.ok", b"x")).seq == 1
        finally:
            await good.disconnect()
    assert "Authorization Violation" in str(error.value)
    for text in (str(error.value), repr(broker), caplog.text):
        assert wrong not in text
        assert right not in text
