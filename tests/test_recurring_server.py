"""Recurring schedules on a real nats-server: two app instances declaring the same per-second schedule get
one tick per tick, not two, and the server keeps ticking while no instance runs. A few seconds each."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from nats.js.manager import JetStreamManager

from jetstream_fastapi import ConsumerRouter, Message
from jetstream_fastapi.integration.lifespan import jetstream_lifespan
from tests.conftest import eventually

TICKS = 3


class Ticks:
    """The ticks both instances' handlers saw, and an event when there are enough."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Message]] = []
        self.enough = asyncio.Event()

    def handler(self, instance: str) -> Any:
        async def tick(msg: Message) -> None:
            self.messages.append((instance, msg))
            if len(self.messages) >= TICKS:
                self.enough.set()

        return tick


def _app(prefix: str, ticks: Ticks, instance: str, **schedule: Any) -> ConsumerRouter:
    """One instance of the app: the same schedule and handler as every other instance."""
    router = ConsumerRouter()
    router.schedule(f"{prefix}.tick", **schedule)
    router.handle(f"{prefix}.tick", queue=f"{prefix}-ticker")(ticks.handler(instance))
    return router


async def _one_tick_per_tick(
    brokers: Any, admin: JetStreamManager, prefix: str, *, unattended: bool, **schedule: Any
) -> None:
    ticks = Ticks()
    one, two = brokers(), brokers()
    async with (
        jetstream_lifespan(one, _app(prefix, ticks, "one", **schedule))(None),
        jetstream_lifespan(two, _app(prefix, ticks, "two", **schedule))(None),
    ):
        await asyncio.wait_for(ticks.enough.wait(), timeout=15.0)
        [kept] = await one.schedules(prefix.upper())  # one schedule, however many instances declared it
    schedulers = {msg.headers["Nats-Scheduler"] for _, msg in ticks.messages}
    assert schedulers == {kept.schedule_subject}
    if "ttl" in schedule:  # the server gives each tick the schedule's TTL
        assert {msg.headers.get("Nats-TTL") for _, msg in ticks.messages} == {"1m"}
    nexts = [msg.headers["Nats-Schedule-Next"] for _, msg in ticks.messages]
    assert len(set(nexts)) == len(nexts), nexts  # no tick delivered twice
    assert nexts == sorted(nexts)
    print(f"{len(nexts)} ticks, by instance {[i for i, _ in ticks.messages]}, next {nexts}")

    if unattended:  # every instance is gone: the server keeps ticking into the stream
        info = await admin.stream_info(kept.stream, subjects_filter=f"{prefix}.tick")
        stored = (info.state.subjects or {}).get(f"{prefix}.tick", 0)

        async def ticking_on() -> None:
            info = await admin.stream_info(kept.stream, subjects_filter=f"{prefix}.tick")
            assert (info.state.subjects or {}).get(f"{prefix}.tick", 0) >= stored + 2

        await eventually(ticking_on, timeout=10.0)
    async with brokers() as again:  # a restart finds it, writes nothing, and can remove it
        assert (await again.declare_schedule(f"{prefix}.tick", **schedule)).outcome == "unchanged"
        assert await again.remove_schedule(f"{prefix}.tick") is True


async def test_two_instances_with_an_every_second_schedule_get_one_tick_per_tick(
    brokers: Any, admin: JetStreamManager, prefix: str
) -> None:
    await _one_tick_per_tick(brokers, admin, prefix, unattended=True, every=dt.timedelta(seconds=1), message=b"tick")


async def test_two_instances_with_a_per_second_cron_in_a_time_zone_get_one_tick_per_tick(
    brokers: Any, admin: JetStreamManager, prefix: str
) -> None:
    await _one_tick_per_tick(
        brokers, admin, prefix, unattended=False, cron="* * * * * *", timezone="Europe/Berlin", ttl=60
    )


async def test_a_changed_schedule_replaces_the_old_one_on_the_server(brokers: Any, prefix: str) -> None:
    broker = brokers()
    await broker.connect()
    subject = f"{prefix}.tick"
    seen: list[tuple[int, bytes]] = []
    old_ticked, new_ticked = asyncio.Event(), asyncio.Event()

    async def tick(msg: Message) -> None:
        assert msg.delivery is not None
        seen.append((msg.delivery.sequence, msg.body))
        (old_ticked if msg.body == b"old" else new_ticked).set()

    await broker.subscribe(subject, tick, queue=f"{prefix}-ticker")
    await broker.declare_schedule(subject, every=1, message=b"old")
    await asyncio.wait_for(old_ticked.wait(), timeout=10.0)
    changed = await broker.declare_schedule(subject, every=1, message=b"new")
    assert changed.outcome == "updated"
    await asyncio.wait_for(new_ticked.wait(), timeout=10.0)
    old = [seq for seq, body in seen if body == b"old"]
    new = [seq for seq, body in seen if body == b"new"]
    assert max(old) < changed.schedule.seq < min(new)  # no old tick after the change was stored
    assert [s.seq for s in await broker.schedules(changed.schedule.stream)] == [changed.schedule.seq]
