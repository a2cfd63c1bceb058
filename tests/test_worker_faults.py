"""The pull worker against a real nats-server: shutdown, concurrency, redelivery, and faults.

Handlers signal the test through events and counters; server-side state is read through nats-py's
JetStreamManager on a connection of the test's own. Nothing here sleeps to wait for work.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import ConsumerInfo
from nats.js.manager import JetStreamManager

from jetstream_fastapi import (
    JetStreamBroker,
    Message,
    PubAck,
    PublishTimeoutError,
    Reject,
    Retry,
)
from jetstream_fastapi.server import NatsServer
from tests.conftest import WAIT, eventually


async def settled(admin: JetStreamManager, stream: str, consumer: str) -> ConsumerInfo:
    """Wait until the consumer has nothing pending or unacked; return its info."""
    result: list[ConsumerInfo] = []

    async def check() -> None:
        info = await admin.consumer_info(stream, consumer)
        assert (info.num_ack_pending, info.num_pending) == (0, 0), info
        result.append(info)

    await eventually(check)
    return result[-1]


class Marker:
    """One event per message body, set when a handler has seen that body."""

    def __init__(self) -> None:
        self.seen: dict[bytes, asyncio.Event] = {}

    def event(self, body: bytes) -> asyncio.Event:
        return self.seen.setdefault(body, asyncio.Event())

    def saw(self, body: bytes) -> None:
        self.event(body).set()


# -- shutdown -------------------------------------------------------------------------------------


async def test_idle_broker_disconnects_fast_and_durables_stay(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    # Default fetch_wait (5 s): the pull requests outstanding at shutdown must not be waited out.
    broker = brokers(fetch_wait=5.0)
    await broker.connect()
    handled = asyncio.Event()

    async def handler(msg: Message) -> None:
        handled.set()

    for name in ("a", "b", "c"):
        await broker.subscribe(f"{prefix}.{name}", handler, queue=f"q{name}")
    await broker.publish(f"{prefix}.a", b"warm up")  # a used subscription, not only fresh ones
    await asyncio.wait_for(handled.wait(), WAIT)
    await settled(admin, prefix.upper(), "qa")
    started = time.monotonic()
    await broker.disconnect()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"idle disconnect took {elapsed:.2f}s"
    assert not broker.is_connected
    for name in ("a", "b", "c"):
        info = await admin.consumer_info(prefix.upper(), f"q{name}")
        assert info.config.durable_name == f"q{name}"


async def test_disconnect_waits_for_running_handler_and_acks_it(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers(shutdown_timeout=10)
    await broker.connect()
    subject = f"{prefix}.work"
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[float] = []

    async def slow(msg: Message) -> None:
        started.set()
        await release.wait()
        finished.append(time.monotonic())

    await broker.subscribe(subject, slow, queue="w", ack_wait=30)
    await broker.publish(subject, b"job")
    await asyncio.wait_for(started.wait(), WAIT)
    asyncio.get_running_loop().call_later(0.3, release.set)
    t0 = time.monotonic()
    await broker.disconnect()
    done = time.monotonic()
    assert finished, "disconnect returned before the running handler finished"
    assert finished[0] <= done
    assert done - t0 >= 0.25
    info = await settled(admin, prefix.upper(), "w")
    assert info.delivered is not None
    assert info.delivered.consumer_seq == 1  # delivered once, never again

    # A new instance gets the next message, and never the handled one again.
    second: list[Message] = []
    marker = asyncio.Event()

    async def record(msg: Message) -> None:
        second.append(msg)
        if msg.body == b"marker":
            marker.set()

    other = brokers()
    await other.connect()
    await other.subscribe(subject, record, queue="w")
    await other.publish(subject, b"marker")
    await asyncio.wait_for(marker.wait(), WAIT)
    assert [m.body for m in second] == [b"marker"]


async def test_shutdown_timeout_gives_back_a_stuck_message_at_once(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers(shutdown_timeout=0.5)
    await broker.connect()
    subject = f"{prefix}.work"
    started = asyncio.Event()
    never = asyncio.Event()

    async def stuck(msg: Message) -> None:
        started.set()
        await never.wait()

    await broker.subscribe(subject, stuck, queue="w", ack_wait=30)
    await broker.publish(subject, b"job")
    await asyncio.wait_for(started.wait(), WAIT)
    t0 = time.monotonic()
    await broker.disconnect()
    elapsed = time.monotonic() - t0
    assert 0.4 <= elapsed < 1.5, elapsed

    redelivered: list[Message] = []
    got = asyncio.Event()

    async def record(msg: Message) -> None:
        redelivered.append(msg)
        got.set()

    other = brokers()
    await other.connect()
    t1 = time.monotonic()
    await other.subscribe(subject, record, queue="w")
    await asyncio.wait_for(got.wait(), WAIT)  # far below the 30 s ack wait
    assert time.monotonic() - t1 < 3.0
    assert redelivered[0].body == b"job"
    assert redelivered[0].attempt == 2


# -- concurrency ----------------------------------------------------------------------------------


async def test_concurrency_bounds_unacked_messages_on_the_server(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    subject = f"{prefix}.work"
    total = 50
    for i in range(total):
        await broker.publish(subject, f"m{i}")
    gate = asyncio.Event()
    four_blocked, all_done = asyncio.Event(), asyncio.Event()
    running = 0
    peak = 0
    sequences: list[int] = []

    async def handler(msg: Message) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        assert msg.delivery is not None
        sequences.append(msg.delivery.sequence)
        if running == 4:
            four_blocked.set()
        try:
            await gate.wait()
        finally:
            running -= 1
        if len(sequences) == total:
            all_done.set()

    await broker.subscribe(subject, handler, queue="w", concurrency=4, batch_size=10)
    await asyncio.wait_for(four_blocked.wait(), WAIT)
    info = await admin.consumer_info(prefix.upper(), "w")
    assert info.num_ack_pending == 4, info
    assert info.num_pending == total - 4
    assert len(sequences) == 4
    gate.set()
    await asyncio.wait_for(all_done.wait(), WAIT)
    assert peak == 4
    assert sorted(sequences) == list(range(1, total + 1))
    info = await settled(admin, prefix.upper(), "w")
    assert info.delivered is not None
    assert info.delivered.consumer_seq == total  # no redelivery


async def test_server_ack_pending_stays_within_concurrency_while_draining(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    # The server applies acks apart from pull requests: had a separate request been sent for slots whose
    # acks were still queued on the server, it would count more than `concurrency` messages as pending.
    broker = brokers()
    await broker.connect()
    subject = f"{prefix}.drain"
    total, concurrency = 3000, 8
    await broker.publish_many([(subject, b"x")] * total)
    handled = 0
    done = asyncio.Event()

    async def handler(msg: Message) -> None:
        nonlocal handled
        await asyncio.sleep(0)  # give the poller a turn between messages
        handled += 1
        if handled == total:
            done.set()

    samples: list[int] = []

    async def poll() -> None:
        while not done.is_set():
            info = await admin.consumer_info(prefix.upper(), "d")
            samples.append(info.num_ack_pending)

    await broker.subscribe(subject, handler, queue="d", concurrency=concurrency, batch_size=concurrency)
    poller = asyncio.create_task(poll())
    await asyncio.wait_for(done.wait(), WAIT)
    await poller
    assert len(samples) > 10
    assert max(samples) <= concurrency, sorted(samples)[-10:]
    await settled(admin, prefix.upper(), "d")


# -- handler outcomes -----------------------------------------------------------------------------


async def test_raising_handler_is_redelivered_with_increasing_attempts(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    subject = f"{prefix}.work"
    attempts: list[int] = []
    done = asyncio.Event()

    async def flaky(msg: Message) -> None:
        attempts.append(msg.attempt)
        if msg.attempt < 3:
            raise RuntimeError("not yet")
        done.set()

    await broker.subscribe(subject, flaky, queue="w", max_deliver=5)
    await broker.publish(subject, b"job")
    await asyncio.wait_for(done.wait(), WAIT)
    assert attempts == [1, 2, 3]
    info = await settled(admin, prefix.upper(), "w")
    assert info.delivered is not None
    assert info.delivered.consumer_seq == 3  # three deliveries of one message


async def test_retry_after_is_honoured(brokers: Callable[..., JetStreamBroker], prefix: str) -> None:
    broker = brokers()  # backoff 0.02 s: a redelivery sooner than 0.5 s would ignore Retry(after=...)
    await broker.connect()
    subject = f"{prefix}.work"
    seen: list[tuple[int, float]] = []
    done = asyncio.Event()

    async def later(msg: Message) -> None:
        seen.append((msg.attempt, time.monotonic()))
        if msg.attempt == 1:
            raise Retry(after=0.5)
        done.set()

    await broker.subscribe(subject, later, queue="w")
    await broker.publish(subject, b"job")
    await asyncio.wait_for(done.wait(), WAIT)
    assert [attempt for attempt, _ in seen] == [1, 2]
    gap = seen[1][1] - seen[0][1]
    assert 0.45 <= gap < 2.5, gap


async def terminated_advisories(
    admin_nc: NATS, stream: str, consumer: str
) -> tuple[list[dict[str, Any]], asyncio.Event]:
    """Subscribe to the server's MSG_TERMINATED advisories of a consumer: (advisories so far, set on each)."""
    received: list[dict[str, Any]] = []
    event = asyncio.Event()

    async def on_advisory(msg: Any) -> None:
        received.append(json.loads(msg.data))
        event.set()

    await admin_nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.{consumer}", cb=on_advisory)
    await admin_nc.flush()
    return received, event


async def test_reject_terminates_without_redelivery(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, admin_nc: NATS, prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    subject = f"{prefix}.work"
    advisories, terminated = await terminated_advisories(admin_nc, prefix.upper(), "w")
    calls: list[tuple[bytes, int]] = []
    marker = asyncio.Event()

    async def picky(msg: Message) -> None:
        calls.append((msg.body, msg.attempt))
        if msg.body == b"poison":
            raise Reject("malformed")
        marker.set()

    await broker.subscribe(subject, picky, queue="w", concurrency=1, max_deliver=5)
    poison = await broker.publish(subject, b"poison")
    await asyncio.wait_for(terminated.wait(), WAIT)
    assert advisories[0]["stream_seq"] == poison.seq
    assert "malformed" in advisories[0].get("reason", "")
    await broker.publish(subject, b"fine")
    await asyncio.wait_for(marker.wait(), WAIT)
    info = await settled(admin, prefix.upper(), "w")
    assert info.delivered is not None
    assert info.delivered.consumer_seq == 2  # each message delivered once
    assert calls == [(b"poison", 1), (b"fine", 1)]


async def test_last_attempt_terminates(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, admin_nc: NATS, prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    subject = f"{prefix}.work"
    advisories, terminated = await terminated_advisories(admin_nc, prefix.upper(), "w")
    attempts: list[int] = []
    marker = asyncio.Event()

    async def broken(msg: Message) -> None:
        if msg.body == b"marker":
            marker.set()
            return
        attempts.append(msg.attempt)
        raise RuntimeError("always fails")

    await broker.subscribe(subject, broken, queue="w", max_deliver=3)
    ack = await broker.publish(subject, b"poison")
    await asyncio.wait_for(terminated.wait(), WAIT)
    assert advisories[0]["stream_seq"] == ack.seq
    assert attempts == [1, 2, 3]
    await broker.publish(subject, b"marker")
    await asyncio.wait_for(marker.wait(), WAIT)
    info = await settled(admin, prefix.upper(), "w")
    assert attempts == [1, 2, 3]  # no fourth attempt
    assert info.delivered is not None
    assert info.delivered.consumer_seq == 4  # three of the poison, one of the marker
    # Still in the stream (Limits retention): a dead letter an operator can inspect.
    assert (await admin.get_msg(prefix.upper(), ack.seq)).data == b"poison"


# -- faults ---------------------------------------------------------------------------------------


async def test_deleted_consumer_is_recreated(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    subject = f"{prefix}.work"
    marker = Marker()

    async def handler(msg: Message) -> None:
        marker.saw(msg.body)

    sub = await broker.subscribe(subject, handler, queue="w")
    await broker.publish(subject, b"before")
    await asyncio.wait_for(marker.event(b"before").wait(), WAIT)
    original = await settled(admin, prefix.upper(), "w")
    assert await admin.delete_consumer(prefix.upper(), "w")
    await broker.publish(subject, b"after")
    await asyncio.wait_for(marker.event(b"after").wait(), WAIT)
    assert sub.running
    await broker.publish(subject, b"later")
    await asyncio.wait_for(marker.event(b"later").wait(), WAIT)
    info = await admin.consumer_info(prefix.upper(), "w")
    assert info.config.durable_name == "w"
    assert info.created > original.created  # a new consumer, made by the worker


async def test_server_restart_consumes_after_and_loses_no_acknowledged_message(
    fresh_server: NatsServer, brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    # fetch_wait 30 s: the watchdog ticks every 15 s, so consuming within 2.5 s of the restart shows that the
    # worker pulls again as soon as the connection is back rather than at its next tick.
    broker = brokers(fresh_server.url, reconnect_time_wait=0.25, publish_timeout=2, fetch_wait=30.0, ack_wait=120)
    await broker.connect()
    subject = f"{prefix}.work"
    marker = Marker()

    async def handler(msg: Message) -> None:
        marker.saw(msg.body)

    await broker.subscribe(subject, handler, queue="w")
    await broker.publish(subject, b"before")
    await asyncio.wait_for(marker.event(b"before").wait(), WAIT)

    await asyncio.to_thread(fresh_server.kill)

    async def publish_during_outage(i: int) -> tuple[bytes, PubAck | None]:
        body = f"outage-{i}".encode()
        try:
            return body, await broker.publish(subject, body, msg_id=body.decode())
        except PublishTimeoutError:
            return body, None

    outage = [asyncio.create_task(publish_during_outage(i)) for i in range(5)]
    await asyncio.to_thread(fresh_server.start)
    results = await asyncio.gather(*outage)

    after: list[bytes] = []
    for i in range(5):
        body = f"after-{i}".encode()
        ack = await broker.publish(subject, body)
        assert ack.seq > 1
        after.append(body)
    acknowledged = [body for body, ack in results if ack is not None] + after
    await asyncio.gather(*(asyncio.wait_for(marker.event(body).wait(), 2.5) for body in acknowledged))
    assert broker.is_connected


async def test_long_handler_is_kept_in_progress_not_redelivered(
    brokers: Callable[..., JetStreamBroker], admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    subject = f"{prefix}.work"
    calls: list[int] = []
    done = asyncio.Event()

    async def long(msg: Message) -> None:
        calls.append(msg.attempt)
        await asyncio.sleep(3.0)  # simulated work, longer than the 2 s ack wait
        done.set()

    # concurrency=2 leaves a free slot with a pull outstanding: an ack-wait redelivery would be taken.
    await broker.subscribe(subject, long, queue="w", ack_wait=2, concurrency=2)
    await broker.publish(subject, b"job")
    await asyncio.wait_for(done.wait(), 10)
    info = await settled(admin, prefix.upper(), "w")
    assert calls == [1]
    assert info.delivered is not None
    assert info.delivered.consumer_seq == 1  # never redelivered


async def test_disconnect_while_server_is_down_returns_promptly(
    fresh_server: NatsServer, brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    broker = brokers(fresh_server.url, reconnect_time_wait=0.25)
    await broker.connect()
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(msg: Message) -> None:
        started.set()
        await release.wait()

    for name in ("a", "b", "c"):
        await broker.subscribe(f"{prefix}.{name}", handler, queue=f"q{name}")
    await broker.publish(f"{prefix}.a", b"x")
    await asyncio.wait_for(started.wait(), WAIT)
    await asyncio.to_thread(fresh_server.kill)
    release.set()  # the handler finishes while the server is gone: its ack cannot be delivered
    t0 = time.monotonic()
    await broker.disconnect()  # must neither raise nor hang
    assert time.monotonic() - t0 < 1.0
    assert not broker.is_connected
    # The same broker connects again once the server is back.
    await asyncio.to_thread(fresh_server.start)
    await broker.connect()
    assert (await broker.publish(f"{prefix}.a", b"y")).seq == 2
