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

from jetstream_fastapi import ConsumerRouter, InvalidArgumentError, Message
from jetstream_fastapi.core.keyorder import key_of, partition_of
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
        ("a.*", {"key_order": True, "queue": "q", "concurrency": 4}, "sets concurrency itself"),
        ("a.*", {"key_order": True, "queue": "q", "exclusive": True}, "do not go together"),
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


def test_the_key_is_the_wildcard_tokens_and_its_partition_is_stable() -> None:
    assert key_of("orders.*.events", "orders.42.events") == "42"
    assert key_of("t.*.x.*", "t.a.x.b") == "a.b"
    assert partition_of("42", 16) == 8  # CRC-32 of "42" is 0x3224b088: the same in every process
    assert {partition_of(f"k{n}", 4) for n in range(100)} == {0, 1, 2, 3}
