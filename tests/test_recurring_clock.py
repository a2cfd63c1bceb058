"""Recurring schedules in the memory broker, on its ManualClock: ticks at their wall-clock times in their
time zone, nothing early, a changed or removed schedule stops its old ticks. Nothing sleeps."""

from __future__ import annotations

import datetime as dt

import pytest

from jetstream_fastapi import ConsumerRouter, InMemoryBroker, InvalidArgumentError, Message, PublishError
from jetstream_fastapi.clock import ManualClock, MonotonicClock
from jetstream_fastapi.integration.lifespan import jetstream_lifespan
from tests.test_contract import Recorder

UTC = dt.UTC


class Ticks(Recorder):
    """Records each tick with the wall-clock time it arrived on the test clock."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock
        self.at: list[dt.datetime] = []

    async def __call__(self, msg: Message) -> None:
        self.at.append(self.clock.wall())
        await super().__call__(msg)


async def _run(clock: ManualClock, broker: InMemoryBroker, seconds: float) -> None:
    await clock.advance(seconds)
    await broker.wait_until_idle()


async def test_a_berlin_six_oclock_cron_ticks_at_five_utc_in_winter_and_four_in_summer() -> None:
    for start, expected in (
        (dt.datetime(2026, 12, 1, 4, 0, tzinfo=UTC), dt.datetime(2026, 12, 1, 5, 0, tzinfo=UTC)),
        (dt.datetime(2026, 7, 1, 3, 0, tzinfo=UTC), dt.datetime(2026, 7, 1, 4, 0, tzinfo=UTC)),
    ):
        clock = ManualClock(wall=start)
        async with InMemoryBroker(clock=clock) as broker:
            ticks = Ticks(clock)
            await broker.subscribe("reports.daily", ticks, queue="report-builder")
            await broker.declare_schedule("reports.daily", cron="0 6 * * *", timezone="Europe/Berlin", message=b"r")
            await _run(clock, broker, 3599)
            assert ticks.messages == []  # not a second early
            await _run(clock, broker, 1)
            assert ticks.at == [expected]
            [tick] = ticks.messages
            assert tick.body == b"r" and tick.headers["Nats-Scheduler"] == "reports._schedule.recurring.reports.daily"
            assert tick.headers["Nats-Schedule-Next"] == (expected + dt.timedelta(days=1)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            await _run(clock, broker, 2 * 86400)
            assert ticks.at == [expected + dt.timedelta(days=n) for n in range(3)]  # one per tick


async def test_an_every_schedule_ticks_from_its_declaration_and_survives_redeclaring() -> None:
    clock = ManualClock(wall=dt.datetime(2026, 12, 1, 12, 0, 7, tzinfo=UTC))
    router = ConsumerRouter()
    ticks = Ticks(clock)

    @router.schedule("cache.refresh", every=dt.timedelta(minutes=5), headers={"X-Kind": "refresh"})
    @router.handle("cache.refresh", queue="refresher")
    async def refresh(msg: Message) -> None:
        await ticks(msg)

    broker = InMemoryBroker(clock=clock)
    async with jetstream_lifespan(broker, router)(None):
        await _run(clock, broker, 299)
        assert ticks.messages == []
        await _run(clock, broker, 1)
        await _run(clock, broker, 600)
        assert len(ticks.messages) == 3 and ticks.messages[0].headers["X-Kind"] == "refresh"
        assert "Nats-Schedule" not in ticks.messages[0].headers and "Nats-Msg-Id" not in ticks.messages[0].headers
        # A second instance's startup (the same broker here) finds the schedule: nothing written, no second one.
        report = await broker.declare_schedules(router.schedules)
        assert report.declared[0].outcome == "unchanged"
        await _run(clock, broker, 300)
        assert len(ticks.messages) == 4
    assert [t - ticks.at[0] for t in ticks.at] == [dt.timedelta(minutes=5 * n) for n in range(4)]


async def test_a_changed_schedule_stops_the_old_ticks_and_a_removed_one_stops_ticking() -> None:
    clock = ManualClock(wall=dt.datetime(2026, 12, 1, 0, 0, tzinfo=UTC))
    async with InMemoryBroker(clock=clock) as broker:
        ticks = Ticks(clock)
        await broker.subscribe("jobs.run", ticks, queue="runner")
        await broker.declare_schedule("jobs.run", every=60, message=b"old")
        await _run(clock, broker, 60)
        assert ticks.bodies == [b"old"]
        changed = await broker.declare_schedule("jobs.run", cron="*/10 * * * * *", message=b"new")  # every 10 s
        assert changed.outcome == "updated"
        await _run(clock, broker, 60)
        assert ticks.bodies == [b"old"] + [b"new"] * 6  # the old every-60 s schedule is gone
        assert await broker.remove_schedule("jobs.run") is True
        await _run(clock, broker, 3600)
        assert len(ticks.messages) == 7
        assert clock.pending == 0  # its last timer found it gone and set no other


async def test_a_raw_schedule_the_server_would_refuse_is_refused_in_memory_too() -> None:
    clock = ManualClock()
    async with InMemoryBroker(clock=clock) as broker:
        await broker.publish("jobs.x", b"make the stream")
        for headers in (
            {"Nats-Schedule": "0 6 * * *", "Nats-Schedule-Target": "jobs.run"},  # five fields: the server needs six
            {"Nats-Schedule": "@every 500ms", "Nats-Schedule-Target": "jobs.run"},
            {"Nats-Schedule": "@every 1s", "Nats-Schedule-Time-Zone": "UTC", "Nats-Schedule-Target": "jobs.run"},
            {"Nats-Schedule": "@daily", "Nats-Schedule-Target": "other.run"},  # not in the stream
        ):
            with pytest.raises(PublishError, match="message schedules"):
                await broker.publish("jobs._schedule.raw", b"", headers=headers)


async def test_ticks_with_a_ttl_leave_the_stream_after_it() -> None:
    clock = ManualClock(wall=dt.datetime(2026, 12, 1, 0, 0, tzinfo=UTC))
    async with InMemoryBroker(clock=clock) as broker:
        await broker.declare_schedule("metrics.sample", every=60, ttl=90)
        await clock.advance(180)  # ticks at 60, 120 and 180 s; the first expired at 150 s
        late = Ticks(clock)
        await broker.subscribe("metrics.sample", late, queue="sampler")  # a consumer that comes late
        await broker.wait_until_idle()
        assert len(late.messages) == 2 and all(m.headers["Nats-TTL"] == "1m30s" for m in late.messages)


def test_the_manual_clocks_wall_time_moves_with_it() -> None:
    clock = ManualClock(5.0, wall=dt.datetime(2026, 3, 29, 1, 59, tzinfo=dt.timezone(dt.timedelta(hours=1))))
    assert clock.wall() == dt.datetime(2026, 3, 29, 0, 59, tzinfo=UTC)
    with pytest.raises(InvalidArgumentError, match="timezone-aware"):
        ManualClock(wall=dt.datetime(2026, 1, 1))  # naive
    assert MonotonicClock().wall().tzinfo is UTC
