"""Recurring schedules (``ConsumerRouter.schedule``, ``broker.declare_schedule``): declared once however
often and by however many instances, changed ones updated and logged, undeclared ones reported; on both
brokers. The ticks themselves: the memory broker on its ManualClock, the real server in
tests/test_recurring_server.py."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from nats.js.api import StreamConfig

from jetstream_fastapi import (
    ConsumerRouter,
    InMemoryBroker,
    InvalidArgumentError,
    Message,
    NoStreamError,
    ServerVersionError,
    StreamFlagError,
)
from jetstream_fastapi.integration.lifespan import jetstream_lifespan
from tests.conftest import BrokerFactory
from tests.test_contract import Recorder


async def test_declaring_a_schedule_twice_keeps_one(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    subject = f"{prefix}.reports.daily"
    first = await broker.declare_schedule(subject, cron="0 6 * * *", timezone="Europe/Berlin", message=b"go")
    again = await broker.declare_schedule(subject, cron="0 6 * * *", timezone="Europe/Berlin", message=b"go")
    assert (first.outcome, again.outcome) == ("created", "unchanged")
    assert again.schedule.seq == first.schedule.seq  # nothing was written the second time
    [kept] = await broker.schedules(first.schedule.stream)
    assert (kept.name, kept.subject, kept.pattern, kept.timezone, kept.body) == (
        subject,
        subject,
        "0 0 6 * * *",  # five fields get seconds 0 in front: the server's six
        "Europe/Berlin",
        b"go",
    )
    assert kept.schedule_subject == f"{prefix}._schedule.recurring.{subject}"


async def test_two_instances_declaring_at_once_write_one_schedule(brokers: Any, prefix: str) -> None:
    import asyncio

    one, two = brokers(), brokers()
    await one.connect()
    await two.connect()
    subject = f"{prefix}.tick"
    results = await asyncio.gather(*(b.declare_schedule(subject, every=dt.timedelta(hours=1)) for b in (one, two)))
    assert sorted(r.outcome for r in results) == ["created", "unchanged"]
    assert results[0].schedule.seq == results[1].schedule.seq
    assert len(await one.schedules(results[0].schedule.stream)) == 1


async def test_a_changed_schedule_is_updated_and_logged(
    make_broker: BrokerFactory, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = await make_broker()
    subject = f"{prefix}.reports.daily"
    first = await broker.declare_schedule(subject, cron="0 6 * * *", timezone="Europe/Berlin")
    with caplog.at_level(logging.WARNING, logger="jetstream_fastapi"):
        changed = await broker.declare_schedule(subject, cron="30 7 * * 1-5", timezone="Europe/Berlin")
    assert changed.outcome == "updated"
    assert changed.previous is not None and changed.previous.pattern == "0 0 6 * * *"
    assert changed.schedule.seq > first.schedule.seq
    [record] = [r for r in caplog.records if "changed" in r.getMessage()]
    assert "0 0 6 * * *" in record.getMessage() and "0 30 7 * * 1-5" in record.getMessage()
    [kept] = await broker.schedules(first.schedule.stream)  # the new one replaced the old one
    assert kept.pattern == "0 30 7 * * 1-5"
    headers = await broker.declare_schedule(subject, cron="30 7 * * 1-5", timezone="Europe/Berlin", headers={"k": "v"})
    assert headers.outcome == "updated"  # the headers a tick carries are part of the schedule


async def test_a_schedule_no_longer_declared_is_reported_and_kept_until_removed(
    make_broker: BrokerFactory, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = await make_broker()
    daily = ConsumerRouter()
    daily.schedule(f"{prefix}.reports", cron="0 6 * * *", name="morning")
    daily.schedule(f"{prefix}.reports", cron="0 18 * * *", name="evening")
    report = await broker.declare_schedules(daily.schedules)
    assert [d.outcome for d in report.declared] == ["created", "created"] and report.undeclared == []
    stream = report.declared[0].schedule.stream

    smaller = ConsumerRouter()  # the next release of the app dropped the evening report
    smaller.schedule(f"{prefix}.reports", cron="0 6 * * *", name="morning")
    with caplog.at_level(logging.WARNING, logger="jetstream_fastapi"):
        report = await broker.declare_schedules(smaller.schedules)
    assert [d.outcome for d in report.declared] == ["unchanged"]
    assert [s.name for s in report.undeclared] == ["evening"]
    assert any("evening" in r.getMessage() and "no longer declares" in r.getMessage() for r in caplog.records)
    assert [s.name for s in await broker.schedules(stream)] == ["evening", "morning"]  # not deleted silently

    assert await broker.remove_schedule(f"{prefix}.reports", name="evening") is True
    assert await broker.remove_schedule(f"{prefix}.reports", name="evening") is False
    assert [s.name for s in await broker.schedules(stream)] == ["morning"]
    report = await broker.declare_schedules(smaller.schedules)
    assert report.undeclared == []


async def test_the_lifespan_declares_before_consuming_and_reports_across_routers(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker()
    reports, billing = ConsumerRouter(), ConsumerRouter()
    recorder = Recorder()

    @reports.schedule(f"{prefix}.reports.daily", every=3600)
    @reports.handle(f"{prefix}.reports.daily", queue=f"{prefix}-builder")
    async def build(msg: Message) -> None:
        await recorder(msg)

    billing.schedule(f"{prefix}.billing", cron="0 0 1 * *")  # a schedule without a handler in this app
    assert build.__name__ == "build"  # the decorator leaves the function as it is
    async with jetstream_lifespan(broker, reports, billing)(None) as state:
        assert [d.outcome for d in state["jetstream_schedules"].declared] == ["created", "created"]
        [sub] = broker.subscriptions
        assert sub.subject == f"{prefix}.reports.daily"
        names = [s.name for s in await broker.schedules(prefix.upper())]
        assert names == [f"{prefix}.billing", f"{prefix}.reports.daily"]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({}, "exactly one"),
        ({"cron": "0 6 * * *", "every": 60}, "exactly one"),
        ({"cron": "0 6 * *"}, "5 fields"),
        ({"cron": "0 0 6 * * * *"}, "5 fields"),
        ({"cron": "61 6 * * *"}, "invalid cron"),
        ({"cron": "0 25 * * *"}, "invalid cron"),
        ({"cron": "0 6 L * *"}, "no L, W or #"),
        ({"cron": "0 6 * * MON#2"}, "no L, W or #"),
        ({"cron": "0 6 * * 7"}, "weekdays are 0-6"),
        ({"cron": "0 6 31 2 *"}, "day-of-month"),  # the server finds no such day either
        ({"cron": "@reboot"}, "5 fields"),
        ({"cron": 6}, "cron expression string"),
        ({"cron": "0 6 * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"cron": "0 6 * * *", "timezone": ""}, "IANA"),
        ({"every": 60, "timezone": "Europe/Berlin"}, "no time zone"),
        ({"every": 0.5}, "at least 1 second"),
        ({"every": dt.timedelta(0)}, "at least 1 second"),
        ({"every": -5}, "at least 1 second"),
        ({"every": "1m"}, "timedelta or a number"),
        ({"every": True}, "timedelta or a number"),
        ({"every": float("inf")}, "timedelta or a number"),
        ({"every": 60, "headers": {"Nats-TTL": "5s"}}, "reserved"),
        ({"every": 60, "name": "two words"}, "schedule name"),
        ({"every": 60, "message": 42}, "message must be"),
        ({"every": 60, "ttl": 0.5}, "ttl must be at least 1 second"),
        ({"every": 60, "ttl": "1h"}, "ttl must be a timedelta or a number"),
    ],
)
async def test_bad_schedules_are_refused_at_import_time_and_before_sending(
    make_broker: BrokerFactory, prefix: str, options: dict[str, Any], match: str
) -> None:
    router = ConsumerRouter()
    with pytest.raises(InvalidArgumentError, match=match):
        router.schedule(f"{prefix}.reports", **options)  # in the decorator, at import time
    assert router.schedules == []
    broker = await make_broker()
    with pytest.raises(InvalidArgumentError, match=match):
        await broker.declare_schedule(f"{prefix}.reports", **options)
    assert not await broker._backend.has_stream(prefix.upper())  # refused before anything reached the server


async def test_bad_targets_and_names_are_refused(make_broker: BrokerFactory, prefix: str) -> None:
    router = ConsumerRouter()
    with pytest.raises(InvalidArgumentError):
        router.schedule(f"{prefix}.*", every=60)  # a schedule publishes to one subject
    router.schedule(f"{prefix}.a", every=60)
    router.schedule(f"{prefix}.a", every=60)  # the same one again (a module imported twice): fine
    with pytest.raises(InvalidArgumentError, match="name="):
        router.schedule(f"{prefix}.a", every=120)
    other = ConsumerRouter()
    other.schedule(f"{prefix}.a", every=300)
    with pytest.raises(InvalidArgumentError, match="already declared"):
        router.include_router(other)
    broker = await make_broker()
    with pytest.raises(InvalidArgumentError, match="schedule name"):
        await broker.remove_schedule(f"{prefix}.a", name="a b")


def test_cron_forms_the_server_reads() -> None:
    from jetstream_fastapi.core.declaring import recurring_schedule
    from jetstream_fastapi.core.recurring import go_duration

    def pattern(**options: Any) -> str:
        return recurring_schedule("a.b", **options).pattern

    assert pattern(cron="0 6 * * *") == "0 0 6 * * *"
    assert pattern(cron="*/5 * * * * *") == "*/5 * * * * *"  # six fields: seconds first, as the server
    assert pattern(cron="  0  6 * *   mon-fri ") == "0 0 6 * * mon-fri"
    assert pattern(cron="0 6 ? * SUN") == "0 0 6 ? * SUN"
    assert pattern(cron="@Daily") == "@daily"
    assert pattern(every=dt.timedelta(hours=1, minutes=30)) == "@every 1h30m"
    assert pattern(every=1) == "@every 1s"
    assert pattern(every=1.5) == "@every 1500ms"
    assert go_duration(90061) == "25h1m1s"
    berlin = recurring_schedule("a.b", cron="0 6 * * *", timezone="Europe/Berlin")
    winter, summer = dt.datetime(2026, 12, 1, 5, 0, tzinfo=dt.UTC), dt.datetime(2026, 7, 1, 3, 0, tzinfo=dt.UTC)
    assert berlin.next_after(winter) == winter + dt.timedelta(days=1)  # strictly after
    assert berlin.next_after(summer) == dt.datetime(2026, 7, 1, 4, 0, tzinfo=dt.UTC)


async def test_a_server_too_old_for_recurring_schedules_is_refused_at_startup(prefix: str) -> None:
    router = ConsumerRouter()
    router.schedule(f"{prefix}.reports", cron="0 6 * * *", timezone="Europe/Berlin")
    async with InMemoryBroker(server_version=(2, 12, 1)) as broker:
        with pytest.raises(
            ServerVersionError, match=r"recurring message schedules needs nats-server 2\.14\.0.*2\.12\.1"
        ):
            async with jetstream_lifespan(broker, router)(None):
                raise AssertionError("started")
        assert broker.subscriptions == []
    async with InMemoryBroker(server_version=(2, 14, 0)) as broker:
        assert (await broker.declare_schedules(router.schedules)).declared[0].outcome == "created"


async def test_a_stream_without_allow_msg_schedules_is_refused_at_startup(
    make_broker: BrokerFactory, prefix: str
) -> None:
    name = prefix.upper()
    broker = await make_broker(streams=[StreamConfig(name=name, subjects=[f"{prefix}.>"])])
    with pytest.raises(StreamFlagError) as caught:
        await broker.declare_schedule(f"{prefix}.reports", every=60)
    assert (caught.value.stream, caught.value.flag) == (name, "allow_msg_schedules")
    literal = name + "L"
    other = await make_broker(
        streams=[StreamConfig(name=literal, subjects=[f"{prefix}l.a", f"{prefix}l.*.b"], allow_msg_schedules=True)]
    )
    with pytest.raises(NoStreamError, match="'>' subject"):
        await other.declare_schedule(f"{prefix}l.a", every=60)


async def test_the_loser_of_a_race_reads_again_and_writes_nothing(
    make_broker: BrokerFactory, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Another instance writes the same schedule between this one's read and its write (interleaved here
    on purpose): the conditional write is refused, the re-read finds the schedule, nothing is written."""
    from jetstream_fastapi.core.declaring import recurring_schedule

    # No tracing: with an SDK tracer provider left by another test, the other instance's write would
    # carry a traceparent header, and so be another schedule.
    broker = await make_broker(tracing=False)
    subject = f"{prefix}.reports"
    schedule = recurring_schedule(subject, cron="0 6 * * *", timezone="Europe/Berlin")
    backend = broker._backend
    real_read_last = backend.read_last
    reads = 0

    async def read_then_lose_the_race(stream: str, schedule_subject: str) -> Any:
        nonlocal reads
        reads += 1
        seen = await real_read_last(stream, schedule_subject)
        if reads == 1:  # the other instance's write lands now, after this one's read
            await broker.publish(schedule_subject, schedule.body, headers=schedule.wire_headers())
        return seen

    backend.read_last = read_then_lose_the_race
    with caplog.at_level(logging.INFO, logger="jetstream_fastapi"):
        declared = await broker.declare_schedule(subject, cron="0 6 * * *", timezone="Europe/Berlin")
    assert declared.outcome == "unchanged" and reads == 2
    assert not [r for r in caplog.records if "schedule" in r.getMessage() and "declared" in r.getMessage()]
    backend.read_last = real_read_last
    [kept] = await broker.schedules(declared.schedule.stream)
    assert kept.seq == declared.schedule.seq


async def test_declaring_two_schedules_of_one_name_is_refused(make_broker: BrokerFactory, prefix: str) -> None:
    from jetstream_fastapi.core.declaring import recurring_schedule

    broker = await make_broker()
    one = recurring_schedule(f"{prefix}.a", every=60, name="tick")
    two = recurring_schedule(f"{prefix}.b", every=60, name="tick")
    with pytest.raises(InvalidArgumentError, match="declared twice"):
        await broker.declare_schedules([one, two])
    assert not await broker._backend.has_stream(prefix.upper())


async def test_the_ticks_ttl_is_part_of_the_schedule_and_needs_the_streams_flag(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker()
    subject = f"{prefix}.tick"
    first = await broker.declare_schedule(subject, every=60, ttl=dt.timedelta(minutes=5))
    [kept] = await broker.schedules(first.schedule.stream)
    assert kept.ttl == 300.0
    assert (await broker.declare_schedule(subject, every=60, ttl=300)).outcome == "unchanged"
    assert (await broker.declare_schedule(subject, every=60)).outcome == "updated"
    name = prefix.upper() + "T"
    other = await make_broker(streams=[StreamConfig(name=name, subjects=[f"{prefix}t.>"], allow_msg_schedules=True)])
    with pytest.raises(StreamFlagError) as caught:
        await other.declare_schedule(f"{prefix}t.tick", every=60, ttl=300)
    assert (caught.value.stream, caught.value.flag) == (name, "allow_msg_ttl")
    assert (await other.declare_schedule(f"{prefix}t.tick", every=60)).outcome == "created"


async def test_an_app_that_dropped_its_last_schedule_hears_of_it_at_startup(
    make_broker: BrokerFactory, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = await make_broker()
    before = ConsumerRouter()
    before.schedule(f"{prefix}.reports", every=3600)
    before.handle(f"{prefix}.reports", queue=f"{prefix}-builder")(Recorder())
    async with jetstream_lifespan(broker, before)(None):
        pass
    after = ConsumerRouter()  # the next release: the handler stays, the schedule is gone
    after.handle(f"{prefix}.reports", queue=f"{prefix}-builder")(Recorder())
    with caplog.at_level(logging.WARNING, logger="jetstream_fastapi"):
        async with jetstream_lifespan(broker, after)(None) as state:
            assert [s.name for s in state["jetstream_schedules"].undeclared] == [f"{prefix}.reports"]
    assert any("no longer declares" in r.getMessage() for r in caplog.records)
