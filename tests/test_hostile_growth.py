"""Bounded memory (issue 22, case 9): nothing the library keeps grows with the subjects, keys or requests it
sees, and a forged status reply can neither grow a set nor make the app ack someone else's message.

The caches and what bounds them (each has a test here or where named):

* the acks a worker keeps for a resend: 64 per handler slot, at most 10,000 (``acks_to_keep``);
* the ``$JS.ACK`` subjects a 503 said were refused: this consumer's only, at most as many as the acks kept;
* the stream of each published subject (``StreamRegistry``): the last 4,096 subjects;
* the subjects a publish has checked (``Preparer``): 4,096, then cleared;
* metrics labels by subject: 256 subjects, the rest under ``_other`` (``observability/metrics.py``);
* requests and PubAcks waiting for a reply: removed when answered or timed out.
"""

from __future__ import annotations

from collections.abc import Callable

import nats
from nats.aio.msg import Msg

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.backends.jetstream.streams import SUBJECTS_KEPT
from jetstream_fastapi.backends.jetstream.worker import PullWorker, acks_to_keep
from jetstream_fastapi.core.handling import ConsumerSettings
from jetstream_fastapi.core.preparing import _CHECKED_SUBJECTS_LIMIT, Preparer
from jetstream_fastapi.observability.metrics import DESTINATION_LIMIT, PublishMeter
from jetstream_fastapi.server import NatsServer
from tests.conftest import eventually


async def _noop(message: Message) -> None:
    return None


def test_the_ack_memory_is_sized_from_the_handler_slots() -> None:
    assert acks_to_keep(ConsumerSettings(concurrency=1, batch_size=1, max_ack_pending=1)) == 128  # a partition
    assert acks_to_keep(ConsumerSettings()) == 64 * (10 + 10)
    assert acks_to_keep(ConsumerSettings(concurrency=1000, batch_size=100)) == 10_000  # the cap


async def test_256_key_order_partitions_keep_a_bounded_ack_memory(
    brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    await broker.subscribe(f"{prefix}.keyed.*", _noop, queue="keyed", key_order=True, partitions=256)
    workers: set[PullWorker] = broker._jetstream._workers
    assert len(workers) == 256
    kept = sum(worker._recovery.recent_acks.maxlen or 0 for worker in workers)
    assert kept <= 256 * 128  # was 256 x 10,000: 2.5 million ack subjects


async def test_the_stream_of_at_most_4096_subjects_is_remembered(
    brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    count = SUBJECTS_KEPT + 100
    acks = await broker.publish_many((f"{prefix}.order.{n}", b"x") for n in range(count))
    assert len(acks) == count
    registry = broker._jetstream._require()[2]
    assert len(registry._by_subject) == SUBJECTS_KEPT
    assert registry.cached(f"{prefix}.order.0") is None  # the oldest went first
    assert registry.cached(f"{prefix}.order.{count - 1}") == acks[-1].stream


async def _sniff_inbox(nc: nats.aio.client.Client, stream: str, consumer: str) -> str:
    """The worker's inbox, as anyone allowed to subscribe to the JetStream API subjects sees it."""
    pulls = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")
    try:
        msg = await pulls.next_msg(timeout=10)
    finally:
        await pulls.unsubscribe()
    return msg.reply


async def _forge_503(nc: nats.aio.client.Client, inbox: str, ack_subject: str) -> None:
    await nc.publish(inbox, b"", headers={"Status": "503", "Nats-Subject": ack_subject})


async def test_a_forged_503_does_not_make_the_app_ack_another_consumers_message(
    nats_server: NatsServer, brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    broker = brokers(fetch_wait=1.0)
    await broker.connect()
    sub = await broker.subscribe(f"{prefix}.jobs", _noop, queue="jobs")
    stream = await broker._jetstream.stream_for(f"{prefix}.jobs")
    hostile = await nats.connect(nats_server.url)
    try:
        inbox = await _sniff_inbox(hostile, stream, "jobs")
        victim = f"$JS.ACK.VICTIM{prefix}.other.1.7.7.1700000000000000000.0"
        received: list[str] = []

        async def spy_on(msg: Msg) -> None:
            received.append(msg.subject)

        spy = await hostile.subscribe(f"$JS.ACK.VICTIM{prefix}.>", cb=spy_on)
        await _forge_503(hostile, inbox, victim)
        await _forge_503(hostile, inbox, f"$JS.ACK.{stream}.jobs.x.y.z.w.v")  # not numbers: ignored too
        counters = sub.consumer.worker.counters  # type: ignore[attr-defined]

        async def ignored() -> None:
            assert counters["forged_status"] == 2, counters

        await eventually(ignored)
        # The check that a 503 starts has run and resent what was refused: nothing went to the victim.
        await broker.publish(f"{prefix}.jobs", b"after")
        await broker.wait_until_idle()
        await hostile.flush()
        await spy.unsubscribe()
        assert received == []
        assert sub.state == "running"
    finally:
        await hostile.close()


async def test_refused_acks_of_this_consumer_keep_a_bounded_set(
    brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    # What 503s naming this consumer's acks add while a check runs (forged or not), before it resends them.
    broker = brokers()
    await broker.connect()
    sub = await broker.subscribe(f"{prefix}.jobs", _noop, queue="jobs", concurrency=1, batch_size=1)
    stream = await broker._jetstream.stream_for(f"{prefix}.jobs")
    worker: PullWorker = sub.consumer.worker  # type: ignore[attr-defined]
    for n in range(1, 1001):
        worker._recovery.refused(f"$JS.ACK.{stream}.jobs.1.{n}.{n}.1700000000000000000.0")
    assert len(worker._recovery.refused_acks) == acks_to_keep(worker._settings) == 128


def test_the_subjects_a_publish_checked_are_bounded() -> None:
    preparer = Preparer(max_subject=4000)
    for n in range(_CHECKED_SUBJECTS_LIMIT + 100):
        preparer.prepare(f"orders.{n}", b"x", None, None, max_payload=1 << 20)
    assert len(preparer._checked) <= _CHECKED_SUBJECTS_LIMIT


def test_publish_metrics_label_at_most_256_subjects() -> None:
    meter = PublishMeter()
    for n in range(DESTINATION_LIMIT + 100):
        meter.record(f"orders.{n}", 0.001, None if n % 2 else TimeoutError())
    assert len(meter._subjects) == DESTINATION_LIMIT
    assert len(meter._children) <= 4 * DESTINATION_LIMIT
