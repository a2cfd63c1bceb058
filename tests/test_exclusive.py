"""``exclusive=True`` (issue #15): one instance of a queue handles messages at a time, the others stand by,
on both brokers; bad input; the server version check. The real-process test (three instances, the active
one SIGKILLed) is in ``tests/test_exclusive_processes.py``."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from jetstream_fastapi import ConsumerRouter, InvalidArgumentError, Message, ServerVersionError
from jetstream_fastapi.core.exclusive import LEASE
from jetstream_fastapi.core.publish_options import check_server_version
from jetstream_fastapi.integration.health import check_readiness
from tests.conftest import WAIT, BrokerFactory


class Instances:
    """What each instance's handler saw, and whether two instances ever ran handlers at once."""

    def __init__(self) -> None:
        self.handled: Counter[str] = Counter()
        self.running: Counter[str] = Counter()
        self.overlaps = 0
        self.total = 0
        self.changed = asyncio.Condition()

    def handler(self, name: str) -> Any:
        async def handle(msg: Message) -> None:
            self.running[name] += 1
            if any(count for other, count in self.running.items() if other != name):
                self.overlaps += 1
            await asyncio.sleep(0.002)
            self.running[name] -= 1
            self.handled[name] += 1
            async with self.changed:
                self.total += 1
                self.changed.notify_all()

        return handle

    async def wait_for(self, total: int) -> None:
        async with asyncio.timeout(WAIT * 2), self.changed:
            await self.changed.wait_for(lambda: self.total >= total)


async def test_one_instance_handles_the_queue_and_a_standby_takes_over(make_broker: BrokerFactory, prefix: str) -> None:
    subject = f"{prefix}.reports"
    if make_broker.kind == "memory":  # type: ignore[attr-defined]
        first = second = publisher = await make_broker()  # one memory: its subscriptions are the instances
    else:
        first, second, publisher = await make_broker(), await make_broker(), await make_broker()
    seen = Instances()
    a = await first.subscribe(subject, seen.handler("a"), queue=f"{prefix}-q", exclusive=True, concurrency=4)
    b = await second.subscribe(subject, seen.handler("b"), queue=f"{prefix}-q", exclusive=True, concurrency=4)
    await publisher.publish_many((subject, str(n)) for n in range(40))
    await seen.wait_for(40)
    print("handled before the stop:", dict(seen.handled), "active:", a.active, b.active)
    assert len(seen.handled) == 1, f"two instances handled messages: {dict(seen.handled)}"
    active, standby = (a, b) if seen.handled["a"] else (b, a)
    assert (active.active, standby.active) == (True, False)
    probes = [await check_readiness(broker) for broker in {id(x): x for x in (first, second)}.values()]
    flags = sorted(c.active for probe in probes for c in probe.consumers if c.queue == f"{prefix}-q")
    assert flags == [False, True], f"readiness says {flags}"
    await active.unsubscribe()
    await publisher.publish_many((subject, str(n)) for n in range(40, 80))
    await seen.wait_for(80)
    print("handled after the stop:", dict(seen.handled))
    assert seen.handled["a"] == 40 and seen.handled["b"] == 40
    assert standby.active is True
    assert seen.overlaps == 0


async def test_a_subscription_that_is_not_exclusive_is_neither_active_nor_standby(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker()
    seen = Instances()
    sub = await broker.subscribe(f"{prefix}.x", seen.handler("a"), queue=f"{prefix}-q")
    assert sub.active is None


@pytest.mark.parametrize(
    ("options", "fragment"),
    [({"exclusive": True}, "needs a queue"), ({"exclusive": "yes", "queue": "q"}, "True or False")],
)
async def test_bad_exclusive_options_are_refused_before_the_server(
    make_broker: BrokerFactory, prefix: str, options: dict[str, Any], fragment: str
) -> None:
    broker = await make_broker()
    with pytest.raises(InvalidArgumentError, match=fragment):
        await broker.subscribe(f"{prefix}.x", Instances().handler("a"), **options)
    with pytest.raises(InvalidArgumentError, match=fragment):
        ConsumerRouter().handle(f"{prefix}.x", **options)
    assert broker.subscriptions == []


def test_a_server_without_priority_groups_is_named_with_the_version_needed() -> None:
    with pytest.raises(ServerVersionError, match=r"needs nats-server 2\.11\.0 or later.*the server is 2\.10\.24"):
        check_server_version(["exclusive consumers"], (2, 10, 24))
    check_server_version(["exclusive consumers"], (2, 11, 0))
    check_server_version(["exclusive consumers"], (3, 0, 0))


async def test_the_active_instance_keeps_its_pin_while_a_handler_outlasts_the_lease(brokers: Any, prefix: str) -> None:
    # Every slot busy: no pull would renew the pin, so the keep-alive pulls must, or a standby takes over
    # (and handles the second message) while the first handler still runs.
    subject, queue = f"{prefix}.long", f"{prefix}-q"
    seen = Instances()
    release = asyncio.Event()

    def instance(name: str) -> Any:
        inner = seen.handler(name)

        async def handle(msg: Message) -> None:
            if msg.body == b"long":
                async with asyncio.timeout(LEASE * 1.5 + WAIT):
                    await release.wait()
            await inner(msg)

        return handle

    first, second = brokers(), brokers()
    await first.connect()
    await second.connect()
    await first.subscribe(subject, instance("a"), queue=queue, exclusive=True, concurrency=1)
    await second.subscribe(subject, instance("b"), queue=queue, exclusive=True, concurrency=1)
    await first.publish(subject, "long")
    await first.publish(subject, "next")
    loop = asyncio.get_running_loop()
    loop.call_later(LEASE * 1.5, release.set)  # the handler outlasts the lease by half of it
    await seen.wait_for(2)
    print("handled:", dict(seen.handled), "overlaps:", seen.overlaps)
    assert len(seen.handled) == 1 and seen.overlaps == 0
