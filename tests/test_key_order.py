"""``key_order=True, partitions=N`` (issue #15) on both brokers: one message per key at a time, in stream
order, through failures and redeliveries, in parallel across keys; bad input; a changed number of
partitions. The real-process test (three instances, a SIGKILL and a restart) is in
``tests/test_key_order_processes.py``."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any

import pytest
from nats.js.api import RetentionPolicy

from jetstream_fastapi import ConsumerRouter, InMemoryBroker, InvalidArgumentError, Message, Reject, ServerVersionError
from jetstream_fastapi.core.key_order import derived_stream_name, key_of, partition_of, partition_transform
from jetstream_fastapi.integration.health import check_readiness
from tests.conftest import WAIT, BrokerFactory


class Orders:
    """What the handlers saw, per key: the order handled, keys in flight, failures."""

    def __init__(self, fail_every: int) -> None:
        self.handled: dict[str, list[int]] = defaultdict(list)
        self.attempts: dict[int, int] = defaultdict(int)
        self.in_flight: set[str] = set()
        self.overlaps = 0
        self.most_keys = 0
        self.total = 0
        self.fail_every = fail_every
        self.changed = asyncio.Condition()

    async def handle(self, msg: Message) -> None:
        key, n = msg.subject.split(".")[2], int(msg.body)
        if key in self.in_flight:
            self.overlaps += 1
        self.in_flight.add(key)
        self.most_keys = max(self.most_keys, len(self.in_flight))
        try:
            await asyncio.sleep(random.random() * 0.003)
            self.attempts[n] += 1
            if n % self.fail_every == 0 and self.attempts[n] == 1:
                raise RuntimeError("first attempt fails")
            self.handled[key].append(n)
        finally:
            self.in_flight.discard(key)
        async with self.changed:
            self.total += 1
            self.changed.notify_all()

    async def wait_for(self, total: int) -> None:
        async with asyncio.timeout(WAIT * 4), self.changed:
            await self.changed.wait_for(lambda: self.total >= total)


async def test_one_message_per_key_at_a_time_in_stream_order(make_broker: BrokerFactory, prefix: str) -> None:
    subject = f"{prefix}.orders.*.events"
    if make_broker.kind == "memory":  # type: ignore[attr-defined]
        instances = [await make_broker()] * 2  # one memory: its subscriptions are the instances
    else:
        instances = [await make_broker(), await make_broker()]
    orders = Orders(fail_every=7)
    subs = [
        await broker.subscribe(subject, orders.handle, queue=f"{prefix}-q", key_order=True, partitions=4)
        for broker in instances
    ]
    assert [sub.partitions for sub in subs] == [4, 4] and subs[0].queue == f"{prefix}-q"
    keys = [f"k{k}" for k in range(10)]
    published: dict[str, list[int]] = defaultdict(list)
    batch = []
    for n in range(200):
        key = keys[n % 7 % len(keys)] if n % 3 else random.choice(keys)
        published[key].append(n)
        batch.append((f"{prefix}.orders.{key}.events", str(n)))
    await instances[0].publish_many(batch)
    await orders.wait_for(200)
    print("keys in flight at most:", orders.most_keys, "overlaps:", orders.overlaps)
    assert dict(orders.handled) == dict(published)
    assert orders.overlaps == 0
    assert orders.most_keys > 1
    for sub in subs:
        await sub.unsubscribe()
    assert instances[0].subscriptions == []


async def test_concurrency_bounds_the_handlers_of_an_instance_across_its_partitions(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker()
    orders = Orders(fail_every=5)
    sub = await broker.subscribe(
        f"{prefix}.orders.*.events", orders.handle, queue=f"{prefix}-q", key_order=True, partitions=8, concurrency=2
    )
    published: dict[str, list[int]] = defaultdict(list)
    batch = []
    for n in range(120):
        key = f"k{n % 12}"
        published[key].append(n)
        batch.append((f"{prefix}.orders.{key}.events", str(n)))
    await broker.publish_many(batch)
    await orders.wait_for(120)
    print("keys in flight at most:", orders.most_keys)
    assert dict(orders.handled) == dict(published)
    assert orders.overlaps == 0
    assert orders.most_keys <= 2  # 8 partitions, 2 handler runs at once in this instance
    await sub.unsubscribe()


async def test_a_changed_number_of_partitions_is_refused_with_the_migration(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker()
    subject, queue = f"{prefix}.a.*", f"{prefix}-q"
    sub = await broker.subscribe(subject, Orders(1).handle, queue=queue, key_order=True, partitions=3)
    await sub.unsubscribe()
    for other in (2, 4):
        with pytest.raises(InvalidArgumentError, match=f"another number of partitions than {other}.*drain"):
            await broker.subscribe(subject, Orders(1).handle, queue=queue, key_order=True, partitions=other)
    again = await broker.subscribe(subject, Orders(1).handle, queue=queue, key_order=True, partitions=3)
    assert again.partitions == 3
    with pytest.raises(InvalidArgumentError, match=r"is key-ordered on .*a\.\*.*use another queue name"):
        await broker.subscribe(f"{prefix}.b.*", Orders(1).handle, queue=queue, key_order=True, partitions=3)


async def test_deliver_policy_new_sources_only_what_comes_after(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    subject = f"{prefix}.orders.*.events"
    await broker.publish_many([(f"{prefix}.orders.k{n}.events", f"old{n}") for n in range(3)])
    orders = Orders(fail_every=1_000_000)
    options: dict[str, Any] = {"deliver_policy": "new"}
    sub = await broker.subscribe(subject, orders.handle, queue=f"{prefix}-q", key_order=True, partitions=2, **options)
    await broker.publish_many([(f"{prefix}.orders.k{n}.events", str(n + 1)) for n in range(4)])
    await orders.wait_for(4)
    await broker.wait_until_idle(WAIT)
    assert dict(orders.handled) == {f"k{n}": [n + 1] for n in range(4)}
    await sub.unsubscribe()


@pytest.mark.parametrize(
    ("subject", "options", "fragment"),
    [
        ("a.*", {"key_order": True}, "needs a queue"),
        ("a.b", {"key_order": True, "queue": "q"}, r"needs a '\*'"),
        ("a.*", {"key_order": True, "queue": "q", "partitions": 0}, "from 1 to 256"),
        ("a.*", {"key_order": True, "queue": "q", "partitions": True}, "from 1 to 256"),
        ("a.*", {"key_order": True, "queue": "q", "partitions": "4"}, "from 1 to 256"),
        ("a.*", {"key_order": "yes", "queue": "q"}, "True or False"),
        ("a.*", {"queue": "q", "partitions": 4}, "partitions is for key_order"),
        ("a.*", {"key_order": True, "queue": "q", "max_ack_pending": 4}, "sets max_ack_pending itself"),
        ("a.*", {"key_order": True, "queue": "q", "concurrency": 0}, "concurrency"),
        ("a.*", {"key_order": True, "queue": "q", "exclusive": True}, "do not go together"),
        ("a.*", {"key_order": True, "queue": "q", "deliver_policy": "last"}, "'all' or 'new'"),
    ],
)
async def test_bad_key_order_options_are_refused_before_the_server(
    make_broker: BrokerFactory, prefix: str, subject: str, options: dict[str, Any], fragment: str
) -> None:
    broker = await make_broker()
    with pytest.raises(InvalidArgumentError, match=fragment):
        await broker.subscribe(f"{prefix}.{subject}", Orders(1).handle, **options)
    with pytest.raises(InvalidArgumentError, match=fragment):
        ConsumerRouter().handle(f"{prefix}.{subject}", **options)
    assert broker.subscriptions == []


def test_the_key_is_the_wildcard_tokens_and_its_partition_is_the_servers_hash() -> None:
    assert key_of("orders.*.events", "orders.42.events") == "42"
    assert key_of("t.*.x.*", "t.a.x.b") == "a.b"
    assert partition_of("42", 16) == 3  # FNV-1a of "42" is 0x2e1ba4e3, as nats-server's partition()
    assert partition_of("a.b", 7) == partition_of("ab", 7)  # the server hashes the tokens concatenated
    assert {partition_of(f"k{n}", 4) for n in range(100)} == {0, 1, 2, 3}
    assert partition_transform("orders.*.events", 16) == "{{partition(16,1)}}.orders.{{wildcard(1)}}.events"
    assert partition_transform("t.*.x.*.>", 3) == "{{partition(3,1,2)}}.t.{{wildcard(1)}}.x.{{wildcard(2)}}.>"
    assert derived_stream_name("ORDERS", "projector") == "ORDERS-projector-keyorder"
    assert len(derived_stream_name("S" * 200, "q" * 100)) <= 255


async def test_each_key_lands_in_the_servers_partition_and_the_handler_sees_the_original_subject(
    make_broker: BrokerFactory, prefix: str
) -> None:
    """Keys of two wildcard tokens: the partition each message was delivered in (its consumer,
    ``<queue>-p<i>``) is the one :func:`partition_of` computes; on the JetStream broker the server
    computed it (the subject transform of the partitioned stream's source)."""
    broker = await make_broker()
    subject = f"{prefix}.t.*.x.*"
    seen: list[tuple[str, str, str, bool]] = []
    done = asyncio.Event()
    keys = [(f"a{n}", f"{n * 7919 % 1000}") for n in range(60)] + [("ab", "c"), ("a", "bc"), ("x", "y")]

    async def record(msg: Message) -> None:
        assert msg.delivery is not None
        seen.append((msg.subject, msg.delivery.consumer, msg.delivery.stream, "Nats-Stream-Source" in msg.headers))
        if len(seen) == len(keys):
            done.set()

    sub = await broker.subscribe(subject, record, queue=f"{prefix}-q", key_order=True, partitions=7)
    acks = await broker.publish_many([(f"{prefix}.t.{a}.x.{b}", b"") for a, b in keys])
    async with asyncio.timeout(WAIT * 2):
        await done.wait()
    assert sub.stream == f"{sub.source}-{prefix}-q-keyorder" and sub.source == acks[0].stream
    by_subject = {s: (consumer, stream, source) for s, consumer, stream, source in seen}
    assert all(ack.stream == sub.source for ack in acks)
    for a, b in keys:
        original = f"{prefix}.t.{a}.x.{b}"
        consumer, stream, source = by_subject[original]
        assert consumer == f"{prefix}-q-p{partition_of(f'{a}.{b}', 7)}", original
        assert stream == sub.stream
        assert not source  # removed: a dead letter or replay carrying it would be refused
    await sub.unsubscribe()


async def test_the_source_stream_is_untouched_and_the_partitioned_stream_drains(
    brokers: Any, admin: Any, prefix: str
) -> None:
    """The stream the app publishes to keeps its subjects and messages (a plain consumer of it sees all
    of them); the partitioned stream is a work queue, empty once every message is handled."""
    broker = brokers()
    await broker.connect()
    subject = f"{prefix}.orders.*.events"
    orders = Orders(fail_every=1_000_000)
    sub = await broker.subscribe(subject, orders.handle, queue=f"{prefix}-q", key_order=True, partitions=4)
    plain: list[str] = []

    async def append(msg: Message) -> None:
        plain.append(msg.subject)

    other = await broker.subscribe(subject, append, queue=f"{prefix}-plain")
    await broker.publish_many([(f"{prefix}.orders.k{n % 5}.events", str(n)) for n in range(40)])
    await orders.wait_for(40)
    await broker.wait_until_idle(WAIT)
    source = await admin.stream_info(sub.source)
    derived = await admin.stream_info(sub.stream)
    assert source.state.messages == 40 and source.config.subjects == [prefix, f"{prefix}.>"]
    assert (await admin.get_msg(sub.source, 1)).subject == f"{prefix}.orders.k0.events"
    assert sorted(plain) == sorted(f"{prefix}.orders.k{n % 5}.events" for n in range(40))
    assert RetentionPolicy(derived.config.retention) is RetentionPolicy.WORK_QUEUE and not derived.config.subjects
    assert derived.state.messages == 0 and derived.state.last_seq == 40
    await other.unsubscribe()
    await sub.unsubscribe()


async def test_a_dead_letter_of_a_key_ordered_queue_replays_to_the_original_subject(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker()
    subject = f"{prefix}.orders.*.events"
    handled: list[tuple[str, bytes]] = []
    fixed, replayed = asyncio.Event(), asyncio.Event()

    async def handle(msg: Message) -> None:
        if msg.body == b"poison" and not fixed.is_set():
            raise Reject("poison")
        handled.append((msg.subject, msg.body))
        if msg.body == b"poison":
            replayed.set()

    sub = await broker.subscribe(subject, handle, queue=f"{prefix}-q", key_order=True, partitions=3)
    await broker.publish(f"{prefix}.orders.7.events", b"poison")
    await broker.publish(f"{prefix}.orders.7.events", b"next")
    await broker.wait_until_idle(WAIT)
    assert handled == [(f"{prefix}.orders.7.events", b"next")]  # the dead letter let its key go on
    (letter,) = await broker.list_dead_letters(10, stream=sub.stream)
    assert letter.subject == f"{prefix}.orders.7.events"
    assert letter.consumer == f"{prefix}-q-p{partition_of('7', 3)}"
    fixed.set()
    ack = await broker.replay_dead_letter(letter.seq)  # to the original subject: stored there, sourced again
    assert ack.stream == sub.source
    async with asyncio.timeout(WAIT):
        await replayed.wait()
    assert handled == [(f"{prefix}.orders.7.events", b"next"), (f"{prefix}.orders.7.events", b"poison")]
    await sub.unsubscribe()


async def test_readiness_shows_a_key_ordered_queue_once(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    await broker.subscribe(f"{prefix}.a.*", Orders(1).handle, queue=f"{prefix}-ko", key_order=True, partitions=5)
    await broker.subscribe(f"{prefix}.b", Orders(1).handle, queue=f"{prefix}-plain")
    readiness = await check_readiness(broker)
    assert readiness.ready
    assert sorted((c.subject, c.queue, c.state) for c in readiness.consumers) == [
        (f"{prefix}.a.*", f"{prefix}-ko", "running"),
        (f"{prefix}.b", f"{prefix}-plain", "running"),
    ]


async def test_key_order_needs_nats_server_2_11() -> None:
    async with InMemoryBroker(server_version=(2, 10, 22)) as broker:
        with pytest.raises(ServerVersionError, match=r"key order needs nats-server 2\.11\.0 or later"):
            await broker.subscribe("a.*", Orders(1).handle, queue="q", key_order=True)
        assert broker.subscriptions == []


async def test_a_subject_ending_in_a_full_wildcard_keeps_its_tail(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    seen: list[str] = []
    done = asyncio.Event()

    async def record(msg: Message) -> None:
        seen.append(msg.subject)
        if len(seen) == 3:
            done.set()

    sub = await broker.subscribe(f"{prefix}.o.*.>", record, queue=f"{prefix}-q", key_order=True, partitions=4)
    subjects = [f"{prefix}.o.1.a", f"{prefix}.o.1.a.b.c", f"{prefix}.o.2.x"]
    await broker.publish_many([(subject, b"") for subject in subjects])
    async with asyncio.timeout(WAIT):
        await done.wait()
    assert sorted(seen) == sorted(subjects)
    await sub.unsubscribe()
