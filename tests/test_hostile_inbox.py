"""Forged deliveries on a pull worker's inbox: anyone who can publish to the inbox subject (it travels in
every pull request, so anyone who can subscribe to ``$JS.API.>`` sees it) can send a message whose reply is
an ack subject of another stream's consumer. Were it taken as a delivery, the app would run its handler on
the forged body and then ack (or nak, or terminate) the other consumer's message with its own credentials.

Only messages whose reply is an ack subject of the worker's own stream and consumer are deliveries, in
the v1 form (``$JS.ACK.<stream>.<consumer>.<9 tokens in all>``) and the v2 form of nats-server 2.16
(``$JS.ACK.<domain>.<acchash>.<stream>.<consumer>...``, 11 tokens or more); the rest are dropped and counted
(``forged_delivery``), logged at WARNING once per :data:`FORGED_LOG_EVERY`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.backends.jetstream.acks import is_ack_of
from jetstream_fastapi.backends.jetstream.worker import FORGED_LOG_EVERY, PullWorker
from jetstream_fastapi.server import NatsServer
from tests.conftest import eventually


def test_an_ack_subject_is_ours_only_for_our_stream_and_consumer() -> None:
    v1 = "$JS.ACK.ORDERS.jobs.1.7.7.1700000000000000000.0"
    v2 = "$JS.ACK._.ACCHASH.ORDERS.jobs.1.7.7.1700000000000000000.0.rAnDoM"
    assert is_ack_of(v1, "ORDERS", "jobs")
    assert is_ack_of(v2, "ORDERS", "jobs")
    assert is_ack_of(v2.rpartition(".")[0], "ORDERS", "jobs")  # 11 tokens: no random token
    assert not is_ack_of(v1, "ORDERS", "other")
    assert not is_ack_of(v2, "VICTIM", "jobs")
    assert not is_ack_of("$JS.ACK.ORDERS.jobs.1.7.7.1700000000000000000", "ORDERS", "jobs")  # 8 tokens
    # A v2 subject of another consumer whose domain and account hash read like our stream and consumer:
    assert not is_ack_of("$JS.ACK.ORDERS.jobs.VICTIM.other.1.7.7.1700000000000000000.0.r", "ORDERS", "jobs")
    assert not is_ack_of("_INBOX.abc", "ORDERS", "jobs")
    assert not is_ack_of("$JS.ACK.ORDERS.jobs.x.y.z.w.v.a.b", "ORDERS", "jobs")  # v2 with no numbers


async def test_a_forged_delivery_neither_runs_the_handler_nor_settles_another_consumers_message(
    nats_server: NatsServer,
    brokers: Callable[..., JetStreamBroker],
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = brokers(fetch_wait=1.0)
    await broker.connect()
    handled: list[bytes] = []

    async def handler(message: Message) -> None:
        handled.append(message.body)

    sub = await broker.subscribe(f"{prefix}.jobs", handler, queue="jobs")
    worker: PullWorker = sub.consumer.worker  # type: ignore[attr-defined]
    inbox = worker._inbox  # what every pull request carries as its reply subject: anyone may read it
    hostile = await nats.connect(nats_server.url)
    victim, captured = f"VICTIM{prefix}", f"victim{prefix}"
    jsm = hostile.jsm()
    await jsm.add_stream(StreamConfig(name=victim, subjects=[f"{captured}.>"]))
    try:
        with caplog.at_level(logging.WARNING, logger="jetstream_fastapi"):
            # 1. Replies that read as a delivery of another stream (9 tokens, v1; 12, v2) on a subject the victim
            # stream captures: the app's "+ACK" would be stored there. (A reply starting with $JS.ACK. from a
            # client is refused by nats-server 2.15 itself: "Permissions Violation for Publish with Reply".)
            forged = [
                f"{captured}.x.{victim}.other.1.7.7.1700000000000000000.0",
                f"{captured}.x.y.z.{victim}.other.1.8.8.1700000000000000000.0.r",
            ]
            for reply in forged:
                await hostile.publish(inbox, b"forged", reply=reply)
            # 2. Real deliveries of another consumer: a push consumer on the victim stream, delivering into the
            # worker's inbox, with the server's own $JS.ACK.<victim>.other... replies.
            await jsm.add_consumer(
                victim, ConsumerConfig(durable_name="other", deliver_subject=inbox, ack_policy=AckPolicy.EXPLICIT)
            )
            for n in range(3):
                await hostile.publish(f"{captured}.order", f"victim {n}".encode())
            await hostile.flush()

            async def dropped() -> None:
                assert worker.counters["forged_delivery"] >= len(forged) + 3, worker.counters

            await eventually(dropped)
        warnings = [r for r in caplog.records if "forged" in r.getMessage()]
        assert len(warnings) == 1  # once per FORGED_LOG_EVERY, not once per message
        assert len(forged) + 3 < FORGED_LOG_EVERY
        # The consumer still advances, on the same connection; the victim was neither written to nor settled.
        await broker.publish(f"{prefix}.jobs", b"after")
        await broker.wait_until_idle()
        assert handled == [b"after"]
        assert (await jsm.stream_info(victim)).state.messages == 3  # no "+ACK" stored by the app
        other = await jsm.consumer_info(victim, "other")
        assert other.ack_floor is not None and other.ack_floor.stream_seq == 0
        assert other.num_ack_pending == 3
        assert sub.state == "running" and broker.is_connected
        assert broker._jetstream.reconnects == 0
    finally:
        await jsm.delete_stream(victim)
        await hostile.close()


async def test_deliveries_with_a_v2_ack_subject_of_this_consumer_are_handled(
    brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    # nats-server 2.16 replies with $JS.ACK.<domain>.<account hash>.<stream>.<consumer>...: still ours.
    broker = brokers()
    await broker.connect()
    handled: list[Message] = []
    done = asyncio.Event()

    async def handler(message: Message) -> None:
        handled.append(message)
        done.set()

    sub = await broker.subscribe(f"{prefix}.jobs", handler, queue="jobs")
    stream = await broker._jetstream.stream_for(f"{prefix}.jobs")
    worker: PullWorker = sub.consumer.worker  # type: ignore[attr-defined]
    reply = f"$JS.ACK._.HASH.{stream}.jobs.2.99.5.1700000000000000000.0.token"
    await worker._on_message(Msg(worker._nc, subject=worker._inbox, reply=reply, data=b"v2"))
    await asyncio.wait_for(done.wait(), timeout=10)
    [message] = handled
    assert message.body == b"v2" and message.delivery is not None
    assert (message.delivery.stream, message.delivery.consumer, message.delivery.sequence) == (stream, "jobs", 99)
    assert worker.counters["forged_delivery"] == 0
