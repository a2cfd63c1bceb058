"""Durable request/reply on a real nats-server: what the stream gives a request that core NATS would not."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.manager import JetStreamManager

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.core.requests import REPLY_TO
from jetstream_fastapi.server import NatsServer
from tests.conftest import eventually
from tests.fault_consumer import HOLD_ACK_WAIT
from tests.test_faults_process import Child
from tests.test_requests import Answering


async def _stored(admin: JetStreamManager, stream: str, count: int) -> None:
    async def check() -> None:
        assert (await admin.stream_info(stream)).state.messages == count

    await eventually(check)


async def test_a_request_survives_a_consumer_restart_within_its_timeout(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    """The only instance of the consumer is down when the request is made; one started later answers it."""
    subject, queue = f"{prefix}.quotes.price", f"{prefix}-pricer"
    requester, consumer = brokers(), brokers()
    await requester.connect()
    await consumer.connect()
    handler = Answering(lambda msg: b"priced " + msg.body)
    await consumer.subscribe(subject, handler, queue=queue)
    await consumer.disconnect()  # the app instance stops; its durable consumer stays on the server
    waiting = asyncio.ensure_future(requester.request(subject, b"ACME", timeout=10.0))
    await _stored(admin, prefix.upper(), 1)
    assert not waiting.done() and handler.messages == []
    restarted = brokers()  # a new instance of the app
    await restarted.connect()
    started = time.monotonic()
    await restarted.subscribe(subject, handler, queue=queue)
    reply = await asyncio.wait_for(waiting, 10.0)
    print(f"reply {time.monotonic() - started:.3f} s after the consumer came back")
    assert reply.body == b"priced ACME" and handler.attempts == [1]
    await restarted.wait_until_idle()  # acked once answered


async def test_a_redelivery_after_a_lost_ack_answers_again_and_the_requester_keeps_its_first_reply(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, admin_nc: NATS, prefix: str
) -> None:
    """A server that lost an ack (as after a crash) delivers the request again: the handler answers again,
    the second reply reaches the requester's inbox and is dropped, and the requester goes on."""
    subject, queue, stream = f"{prefix}.quotes.price", f"{prefix}-pricer", prefix.upper()
    requester, consumer = brokers(), brokers()
    await requester.connect()
    await consumer.connect()
    calls: list[int] = []

    def answer(msg: Message) -> bytes:
        calls.append(msg.attempt)
        return f"answer {len(calls)}".encode()

    handler = Answering(answer)
    subscription = await consumer.subscribe(subject, handler, queue=queue)
    reply = await requester.request(subject, b"ACME", timeout=10.0)
    assert reply.body == b"answer 1"
    await consumer.wait_until_idle()
    address = handler.messages[0].headers[REPLY_TO]
    seen: list[bytes] = []
    got = asyncio.Event()

    async def spy(msg: Msg) -> None:
        seen.append(msg.data)
        got.set()

    await admin_nc.subscribe(address, cb=spy)  # a second listener on the same address, to see the reply
    await admin_nc.flush()
    await subscription.unsubscribe()
    await admin.delete_consumer(stream, queue)  # the server forgets what was acked
    await consumer.subscribe(subject, handler, queue=queue)  # delivers the stored request once more
    await asyncio.wait_for(got.wait(), 10.0)
    assert seen == [b"answer 2"] and len(calls) == 2

    async def dropped() -> None:
        assert requester._requests.late_replies == 1 and requester._requests.waiting == 0

    await eventually(dropped)
    assert (await requester.request(subject, b"ACME", timeout=10.0)).body == b"answer 3"


async def test_a_request_waits_through_a_server_restart(fresh_server: NatsServer, prefix: str) -> None:
    """The requester's inbox is subscribed again after its reconnect: a reply sent afterwards reaches it."""
    subject, queue = f"{prefix}.quotes.price", f"{prefix}-pricer"
    options: dict[str, Any] = {"fetch_wait": 1.0, "reconnect_time_wait": 0.1}
    requester = JetStreamBroker(fresh_server.url, **options)
    await requester.connect()
    try:
        waiting = asyncio.ensure_future(requester.request(subject, b"ACME", timeout=20.0))
        check = JetStreamBroker(fresh_server.url, **options)
        async with check:

            async def stored() -> None:
                assert await check._backend.read(prefix.upper(), 1) is not None

            await eventually(stored)
        fresh_server.stop(remove_store=False)
        fresh_server.start()

        async def reconnected() -> None:  # (right after the restart, is_connected may not know yet)
            assert requester.reconnects == 1 and requester.is_connected

        await eventually(reconnected, timeout=10.0)
        assert not waiting.done()
        consumer = JetStreamBroker(fresh_server.url, **options)
        async with consumer:
            handler = Answering(lambda msg: b"after the restart")
            await consumer.subscribe(subject, handler, queue=queue)
            reply = await asyncio.wait_for(waiting, 15.0)
        assert reply.body == b"after the restart" and handler.attempts == [1]
    finally:
        await requester.disconnect()


async def test_a_request_survives_the_crash_of_the_consumer_that_took_it(
    nats_server: NatsServer, brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    """The consumer process holding the request is SIGKILLed: the server hands the request to another
    instance after its ack wait, and that one's reply reaches the requester, within the timeout."""
    subject = f"{prefix}.quotes.price"
    requester = brokers()
    await requester.connect()
    victim = await Child.start("request: consumer process", "hold", nats_server.url, subject)
    try:
        await victim.until(lambda: "READY" in victim.lines, 10, "subscribed")
        waiting = asyncio.ensure_future(requester.request(subject, b"ACME", timeout=HOLD_ACK_WAIT + 10))
        await victim.until(lambda: len(victim.of("HOLD")) == 1, 10, "holding the request")
        victim.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        assert await asyncio.wait_for(victim.process.wait(), 10) == -signal.SIGKILL
    finally:
        await victim.stop()
    assert not waiting.done()
    handler = Answering(lambda msg: f"answered on attempt {msg.attempt}".encode())
    await requester.subscribe(subject, handler, queue="shared", ack_wait=HOLD_ACK_WAIT)  # the other instance
    reply = await asyncio.wait_for(waiting, HOLD_ACK_WAIT + 10)
    print(f"reply {time.monotonic() - killed:.2f} s after the kill (ack wait {HOLD_ACK_WAIT:g} s)")
    assert reply.body == b"answered on attempt 2" and reply.headers["Request-Attempt"] == "2"
    assert handler.attempts == [2]
