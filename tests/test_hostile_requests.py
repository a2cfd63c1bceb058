"""Hostile input against request/reply and the wire limits: another client on the same account publishes
forged messages; after each, the invariants hold.

* A ``Request-Reply-To`` not made by ``request()`` (a JetStream API subject, another stream's subject, an
  address longer than the server's control line) is never answered: the message is handled as a plain
  one, a WARNING says why and the subscription's ``reply_refused`` counter counts it.
* No stream the app does not own is touched, the app's connection stays up (a later publish works) and
  the consumer advances (the message is acked, or dead-lettered when it is terminated).
* A subject or header too long for the wire raises the library's error before anything is sent, on both
  brokers, instead of closing the connection.
"""

from __future__ import annotations

import contextlib
import logging
import math
import string
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig
from nats.js.manager import JetStreamManager
from pydantic import BaseModel

from jetstream_fastapi import (
    ConsumerRouter,
    InMemoryBroker,
    InvalidArgumentError,
    InvalidHeaderError,
    InvalidSubjectError,
    JetStreamBroker,
    Message,
    Reject,
)
from jetstream_fastapi.core.requests import REPLY_TO
from jetstream_fastapi.server import NatsServer
from tests.conftest import FAST_BACKOFF, BrokerFactory, eventually
from tests.test_contract_request import Answering

VICTIM_MESSAGES = 3


class Order(BaseModel):
    id: int


@pytest.fixture
async def forger(nats_server: NatsServer) -> AsyncIterator[NATS]:
    """The hostile client: a raw nats-py connection of its own on the same account."""
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


class Scene:
    """A victim stream with messages, a ledger stream nobody should write to, and the app's consumer."""

    def __init__(self, prefix: str, admin_nc: NATS) -> None:
        self.prefix = prefix
        self.admin_nc = admin_nc
        self.admin = admin_nc.jsm()
        self.victim = f"{prefix.upper()}_VICTIM"
        self.ledger = f"{prefix.upper()}_LEDGER"
        self.subject = f"{prefix}.jobs"
        self.stream = prefix.upper()  # the app's own stream, auto-provisioned

    async def build(self) -> None:
        await self.admin.add_stream(StreamConfig(name=self.victim, subjects=[f"{self.prefix}victim.>"]))
        await self.admin.add_stream(StreamConfig(name=self.ledger, subjects=[f"{self.prefix}ledger.>"]))
        js = self.admin_nc.jetstream()
        for index in range(VICTIM_MESSAGES):
            await js.publish(f"{self.prefix}victim.data", f"precious {index}".encode())

    async def teardown(self) -> None:
        for stream in (self.victim, self.ledger):
            with contextlib.suppress(Exception):  # the unchanged code may have deleted it already
                await self.admin.delete_stream(stream)

    async def check_untouched(self) -> None:
        """Nothing the app does not own was touched."""
        victim = await self.admin.stream_info(self.victim)  # NotFoundError if it was deleted
        assert victim.state.messages == VICTIM_MESSAGES
        assert (await self.admin.stream_info(self.ledger)).state.messages == 0


@pytest.fixture
async def scene(prefix: str, admin_nc: NATS) -> AsyncIterator[Scene]:
    built = Scene(prefix, admin_nc)
    await built.build()
    yield built
    await built.teardown()


async def _still_connected(broker: JetStreamBroker, scene: Scene) -> None:
    """The app's connection survived: it is connected and a later publish is stored."""
    assert broker.is_connected
    ack = await broker.publish(f"{scene.prefix}.after", b"after", timeout=5.0)
    assert ack.stream == scene.stream


def _reject(message: Message) -> None:
    raise Reject("no such job")


def _crash(message: Message) -> None:
    raise RuntimeError("crash on the last attempt")


FORGED = {
    "purge": "$JS.API.STREAM.PURGE.{victim}",
    "delete": "$JS.API.STREAM.DELETE.{victim}",
    "another stream's subject": "{prefix}ledger.entries",
    "an inbox with more tokens": "_INBOX.{prefix}ledger.entries.x",
    "6,000-character inbox": "_INBOX." + "a" * 6000 + ".1",
    "6,000-character subject": "{prefix}ledger." + "x" * 6000,
}


async def _forge(forger: NATS, scene: Scene, address: str, body: bytes = b"{}") -> int:
    """Store a plain message (not made by ``request()``) with a forged reply address; its stream sequence."""
    ack = await forger.jetstream().publish(scene.subject, body, headers={REPLY_TO: address})
    return ack.seq


async def _settled(broker: JetStreamBroker, scene: Scene, queue: str, seq: int) -> None:
    """The consumer advanced past the forged message (acked, or terminated after its dead letter)."""
    await broker.wait_until_idle()

    async def advanced() -> None:
        info = await scene.admin.consumer_info(scene.stream, queue)
        assert info.ack_floor.stream_seq >= seq and info.num_ack_pending == 0

    await eventually(advanced)


@pytest.mark.parametrize("forged", list(FORGED))
async def test_a_forged_reply_address_is_not_answered_for_a_returned_value(
    brokers: Callable[..., JetStreamBroker],
    forger: NATS,
    scene: Scene,
    forged: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = brokers()
    await broker.connect()
    queue = f"{scene.prefix}-worker"
    handler = Answering(b"the handler's answer")
    subscription = await broker.subscribe(scene.subject, handler, queue=queue)
    address = FORGED[forged].format(victim=scene.victim, prefix=scene.prefix)
    with caplog.at_level(logging.WARNING, logger="jetstream_fastapi"):
        seq = await _forge(forger, scene, address)
        await _settled(broker, scene, queue, seq)
    assert handler.attempts == [1]
    await scene.check_untouched()
    await _still_connected(broker, scene)
    assert subscription.counters["reply_refused"] == 1
    assert any("not answering" in record.getMessage() for record in caplog.records)
    assert await broker.list_dead_letters(stream=scene.stream) == []  # handled as a plain message: acked


@pytest.mark.parametrize("failure", ["reject", "invalid typed payload", "last attempt"])
@pytest.mark.parametrize("forged", ["purge", "delete", "6,000-character inbox"])
async def test_a_forged_reply_address_gets_no_error_reply_for_a_terminated_message(
    brokers: Callable[..., JetStreamBroker], forger: NATS, scene: Scene, forged: str, failure: str
) -> None:
    """A terminated message's error reply has an empty body: to a JetStream API subject it is a request."""
    broker = brokers(max_deliver=1)
    await broker.connect()
    queue = f"{scene.prefix}-worker"
    if failure == "invalid typed payload":
        router = ConsumerRouter()
        handled: list[Order] = []

        @router.handle(scene.subject, queue=queue)
        async def take(order: Order) -> None:
            handled.append(order)

        await router.start(broker)
        subscription = broker.subscriptions[0]
    else:
        handler = Answering(_reject if failure == "reject" else _crash)
        subscription = await broker.subscribe(scene.subject, handler, queue=queue)
    address = FORGED[forged].format(victim=scene.victim, prefix=scene.prefix)
    seq = await _forge(forger, scene, address, b"not an order")
    await _settled(broker, scene, queue, seq)
    await scene.check_untouched()
    await _still_connected(broker, scene)
    [letter] = await broker.list_dead_letters(stream=scene.stream)  # dead-lettered, as any terminated message
    assert letter.sequence == seq
    assert subscription.counters["reply_refused"] == 1


async def test_a_genuine_request_is_still_answered_next_to_forged_ones(
    brokers: Callable[..., JetStreamBroker], forger: NATS, scene: Scene
) -> None:
    broker, requester = brokers(), brokers()
    await broker.connect()
    await requester.connect()
    queue = f"{scene.prefix}-worker"
    handler = Answering(lambda msg: b"answer to " + msg.body)
    subscription = await broker.subscribe(scene.subject, handler, queue=queue)
    seq = await _forge(forger, scene, FORGED["purge"].format(victim=scene.victim))
    reply = await requester.request(scene.subject, b"genuine", timeout=10.0)
    assert reply.body == b"answer to genuine"
    await _settled(broker, scene, queue, seq + 1)
    await scene.check_untouched()
    assert subscription.counters["reply_refused"] == 1


async def test_an_inbox_address_that_a_stream_captures_is_not_answered(
    brokers: Callable[..., JetStreamBroker], forger: NATS, scene: Scene, admin: JetStreamManager
) -> None:
    """An address under the inbox prefix, but captured by a stream: the reply would be stored there."""
    trap = f"{scene.prefix.upper()}_TRAP"
    await admin.add_stream(StreamConfig(name=trap, subjects=[f"_INBOX.{scene.prefix}trap.>"]))
    try:
        broker = brokers()
        await broker.connect()
        queue = f"{scene.prefix}-worker"
        subscription = await broker.subscribe(scene.subject, Answering(b"answer"), queue=queue)
        seq = await _forge(forger, scene, f"_INBOX.{scene.prefix}trap.1")
        await _settled(broker, scene, queue, seq)
        assert (await admin.stream_info(trap)).state.messages == 0
        assert subscription.counters["reply_refused"] == 1
    finally:
        await admin.delete_stream(trap)


async def test_an_inbox_address_that_a_memory_stream_captures_is_not_answered(prefix: str) -> None:
    trap = StreamConfig(name="TRAP", subjects=["_INBOX.trap.>"])
    async with InMemoryBroker(streams=[trap]) as broker:
        subscription = await broker.subscribe(f"{prefix}.jobs", Answering(b"answer"), queue=f"{prefix}-worker")
        await broker.publish(f"{prefix}.jobs", b"x", headers={REPLY_TO: "_INBOX.trap.1"})
        await broker.wait_until_idle()
        assert subscription.counters["reply_refused"] == 1
        assert broker._memory.streams["TRAP"].messages == []
        reply = await broker.request(f"{prefix}.jobs", b"x", timeout=5.0)  # its own inbox is free: answered
        assert reply.body == b"answer"


@pytest.mark.parametrize(
    "address",
    [
        "$JS.API.STREAM.PURGE.VICTIM",
        "ledger.entries",
        "_INBOX." + "a" * 6000 + ".1",
        "_INBOX.a.b.c",  # not the shape request() makes: <prefix>.<inbox>.<token>
        "_INBOXES.a.b",
        "_INBOX.a",
    ],
)
async def test_a_forged_reply_address_is_refused_and_counted_on_both_brokers(
    make_broker: BrokerFactory, prefix: str, address: str
) -> None:
    broker = await make_broker()
    sent: list[str] = []
    original = broker._backend.reply

    async def reply(to: str, message: Any) -> None:
        sent.append(to)
        await original(to, message)

    broker._backend.reply = reply
    handler = Answering(b"answer")
    subscription = await broker.subscribe(f"{prefix}.jobs", handler, queue=f"{prefix}-worker")
    await broker.publish(f"{prefix}.jobs", b"x", headers={REPLY_TO: address})
    await broker.wait_until_idle()
    assert handler.attempts == [1] and sent == []
    assert subscription.counters["reply_refused"] == 1
    assert broker.is_connected


async def test_request_tokens_are_unpredictable() -> None:
    """Each request's reply address ends in a token of at least 128 random bits, never a counter."""
    async with InMemoryBroker() as broker:
        handler = Answering(b"ok")
        await broker.subscribe("quotes.price", handler, queue="pricer")
        for _ in range(50):
            await broker.request("quotes.price", b"x", timeout=5.0)
        addresses = [message.headers[REPLY_TO] for message in handler.messages]
    inboxes = {address.rsplit(".", 1)[0] for address in addresses}
    tokens = [address.rsplit(".", 1)[1] for address in addresses]
    assert len(inboxes) == 1 and len(set(tokens)) == len(tokens)
    assert all(len(token) >= 32 and set(token) <= set(string.hexdigits) for token in tokens)  # 32 hex: 128 bits
    # Not a counter: the tokens are not in increasing order, and their characters are spread evenly.
    assert sorted(tokens) != tokens
    counts = Counter("".join(tokens))
    entropy = -sum(n / sum(counts.values()) * math.log2(n / sum(counts.values())) for n in counts.values())
    assert entropy > 3.9  # bits per hex character; 4 is uniform


# -- limits before the wire --------------------------------------------------------------------------


async def _still_works(broker: Any, prefix: str) -> None:
    assert broker.is_connected
    assert (await broker.publish(f"{prefix}.after", b"after", timeout=5.0)).seq >= 1


async def test_a_10000_character_subject_raises_invalid_subject_error(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    subject = f"{prefix}." + "a" * 10_000
    with pytest.raises(InvalidSubjectError, match="control line"):
        await broker.publish(subject, b"x", timeout=5.0)
    with pytest.raises(InvalidSubjectError, match="control line"):
        await broker.request(subject, b"x", timeout=5.0)
    with pytest.raises(InvalidSubjectError, match="control line"):
        await broker.subscribe(subject, Answering(), queue=f"{prefix}-long")
    await _still_works(broker, prefix)


HUGE_HEADERS = {
    "name": {"X-" + "a" * 70_000: "v"},
    "value": {"X-Long": "v" * 70_000},
    "many": {f"X-{index}": "v" * 3000 for index in range(25)},
}


@pytest.mark.parametrize("where", list(HUGE_HEADERS))
async def test_headers_past_64_kib_raise_invalid_header_error_before_sending(
    make_broker: BrokerFactory, prefix: str, where: str
) -> None:
    """JetStream stores at most 64 KiB of headers: said before the round trip, the same on both brokers
    (the memory broker stored them, the server refused them after the round trip with a PublishError)."""
    broker = await make_broker()
    headers = HUGE_HEADERS[where]
    with pytest.raises(InvalidHeaderError, match="64 KiB"):
        await broker.publish(f"{prefix}.a", b"x", headers=headers, timeout=5.0)
    with pytest.raises(InvalidHeaderError, match="64 KiB"):
        await broker.publish(f"{prefix}.a", Message(b"x", headers=headers), timeout=5.0)
    with pytest.raises(InvalidHeaderError, match="64 KiB"):
        await broker.request(f"{prefix}.a", b"x", headers=headers, timeout=5.0)
    await _still_works(broker, prefix)


async def test_a_10000_character_header_name_and_value_still_travel(make_broker: BrokerFactory, prefix: str) -> None:
    """Headers are not on the control line: a long one within 64 KiB is stored and delivered intact."""
    broker = await make_broker()
    headers = {"X-" + "a" * 10_000: "v", "X-Long": "v" * 10_000}
    handler = Answering()
    await broker.subscribe(f"{prefix}.a", handler, queue=f"{prefix}-reader")
    await broker.publish(f"{prefix}.a", b"x", headers=headers, timeout=5.0)
    await broker.wait_until_idle()
    [message] = handler.messages
    assert {name: message.headers[name] for name in headers} == headers


async def test_the_memory_broker_takes_its_limits_from_its_settings(prefix: str) -> None:
    async with InMemoryBroker(max_control_line=256) as broker:
        with pytest.raises(InvalidSubjectError, match="control line"):
            await broker.publish(f"{prefix}." + "a" * 200, b"x")
        assert (await broker.publish(f"{prefix}." + "a" * 100, b"x")).seq == 1


async def test_the_inbox_prefix_is_configurable_on_both_brokers(
    make_broker: BrokerFactory, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An account with its own inbox prefix: requests use it, and only it is answered."""
    broker = await make_broker(inbox_prefix=f"_INBOX_{prefix}")
    handler = Answering(b"answer")
    subscription = await broker.subscribe(f"{prefix}.jobs", handler, queue=f"{prefix}-worker")
    reply = await broker.request(f"{prefix}.jobs", b"x", timeout=5.0)
    assert reply.body == b"answer"
    assert handler.messages[0].headers[REPLY_TO].startswith(f"_INBOX_{prefix}.")
    await broker.publish(f"{prefix}.jobs", b"x", headers={REPLY_TO: "_INBOX.abc.def"})  # the default prefix: refused
    await broker.wait_until_idle()
    assert subscription.counters["reply_refused"] == 1


@pytest.mark.parametrize("bad", ["$JS", "", "a b", "_INBOX.*", "x" * 200, 7])
async def test_a_bad_inbox_prefix_is_refused_at_construction(bad: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="inbox_prefix"):
        InMemoryBroker(inbox_prefix=bad)
    with pytest.raises(InvalidArgumentError, match="inbox_prefix"):
        JetStreamBroker("nats://127.0.0.1:4222", inbox_prefix=bad)


async def test_a_raw_client_cannot_make_the_app_send_a_long_control_line(
    brokers: Callable[..., JetStreamBroker], forger: NATS, scene: Scene
) -> None:
    """The forged address arrives in a header, which nats-py sends as it is: the app must not echo it."""
    broker = brokers()
    await broker.connect()
    queue = f"{scene.prefix}-worker"
    await broker.subscribe(scene.subject, Answering(b"answer"), queue=queue)
    for length in (4000, 4090, 4096, 5000, 60_000):
        seq = await _forge(forger, scene, "_INBOX.a." + "b" * length)
        await _settled(broker, scene, queue, seq)
        await _still_connected(broker, scene)


async def test_a_reply_address_that_cannot_be_checked_is_retried_like_a_reply_not_sent(prefix: str) -> None:
    """The server could not say whether a stream captures the address: not answered now, not acked either."""
    async with InMemoryBroker(backoff=FAST_BACKOFF) as broker:
        backend = broker._memory
        original = backend.captures
        failures = [RuntimeError("the stream lookup timed out")]

        async def captures(subject: str) -> bool:
            if failures:
                raise failures.pop()
            return await original(subject)

        backend.captures = captures  # type: ignore[method-assign]
        handler = Answering(lambda msg: f"answer {msg.attempt}".encode())
        subscription = await broker.subscribe(f"{prefix}.jobs", handler, queue=f"{prefix}-worker")
        reply = await broker.request(f"{prefix}.jobs", b"x", timeout=5.0)
        assert reply.body == b"answer 2" and handler.attempts == [1, 2]
        assert subscription.counters["reply_failed"] == 1 and subscription.counters["reply_refused"] == 0
