"""Delayed delivery (``delay=``/``at=``) through the server's message schedules, on both brokers; the memory
broker on its ManualClock (nothing sleeps there), the real server in real time."""

from __future__ import annotations

import datetime as dt
from typing import Any

import nats.js.errors
import pytest
from nats.js.api import StreamConfig
from nats.js.manager import JetStreamManager

from jetstream_fastapi import (
    InMemoryBroker,
    InvalidArgumentError,
    Message,
    NoStreamError,
    ServerVersionError,
    StreamFlagError,
    UnknownOptionError,
)
from jetstream_fastapi.clock import ManualClock
from tests.conftest import BrokerFactory, eventually
from tests.test_contract import Recorder


class Timed(Recorder):
    """A recorder that also notes the wall-clock time each message arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[dt.datetime] = []

    async def __call__(self, msg: Message) -> None:
        self.arrived.append(dt.datetime.now(dt.UTC))
        await super().__call__(msg)


async def _broker(make_broker: BrokerFactory, **options: Any) -> tuple[Any, ManualClock | None]:
    clock = ManualClock() if make_broker.kind == "memory" else None  # type: ignore[attr-defined]
    if clock is not None:
        options["clock"] = clock
    return await make_broker(**options), clock


async def test_a_delayed_message_arrives_at_its_time_not_before(make_broker: BrokerFactory, prefix: str) -> None:
    broker, clock = await _broker(make_broker)
    subject = f"{prefix}.reminders.send"
    recorder = Timed()
    await broker.subscribe(subject, recorder, queue=f"{prefix}-reminder")
    delay = 30.0 if clock is not None else 1.0
    asked = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
    ack = await broker.publish(
        subject, Message(body=b"ping", headers={"X-Order": "7"}), delay=dt.timedelta(seconds=delay)
    )
    assert ack.seq >= 1
    if clock is not None:
        await clock.advance(delay - 1)
        await broker.wait_until_idle()
        assert recorder.messages == []  # not a second early
        await clock.advance(1.5)
    [msg] = await recorder.wait_for(1)
    assert msg.subject == subject and msg.body == b"ping" and msg.headers["X-Order"] == "7"
    if clock is None:  # the server's own clock is this machine's
        assert recorder.arrived[0] >= asked
        print(f"delayed 1 s, handled {(recorder.arrived[0] - asked).total_seconds():.3f} s after its time")
    await broker.wait_until_idle()
    assert len(recorder.messages) == 1


async def test_two_delayed_messages_for_one_subject_both_arrive_and_a_wildcard_sees_no_schedule(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker, clock = await _broker(make_broker)
    subject = f"{prefix}.jobs.run"
    exact, wildcard = Recorder(), Recorder()
    await broker.subscribe(subject, exact, queue=f"{prefix}-exact")
    await broker.subscribe(f"{prefix}.>", wildcard, queue=f"{prefix}-all")
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.0)
    await broker.publish(subject, b"first", at=at)
    await broker.publish(subject, b"second", at=at + dt.timedelta(milliseconds=100))
    if clock is not None:
        await clock.advance(2)
    await exact.wait_for(2)
    await wildcard.wait_for(2)
    await broker.wait_until_idle()
    assert sorted(exact.bodies) == [b"first", b"second"]  # neither replaced the other
    assert sorted(wildcard.bodies) == [b"first", b"second"]  # the schedules themselves are not delivered
    assert {m.subject for m in wildcard.messages} == {subject}


async def test_publish_many_delays_per_message(make_broker: BrokerFactory, prefix: str) -> None:
    broker, clock = await _broker(make_broker)
    subject = f"{prefix}.batch"
    recorder = Recorder()
    await broker.subscribe(subject, recorder, queue=f"{prefix}-batch")
    acks = await broker.publish_many([(subject, b"now"), (subject, b"later", {"delay": 1.0}), (subject, b"also now")])
    assert len(acks) == 3
    await recorder.wait_for(2)
    assert sorted(recorder.bodies) == [b"also now", b"now"]
    if clock is not None:
        await clock.advance(1.5)
    await recorder.wait_for(3)
    assert recorder.bodies[-1] == b"later"


async def test_a_stream_without_allow_msg_schedules_names_stream_and_flag(
    make_broker: BrokerFactory, prefix: str
) -> None:
    name = prefix.upper()
    broker = await make_broker(streams=[StreamConfig(name=name, subjects=[f"{prefix}.>"])])
    with pytest.raises(StreamFlagError) as caught:
        await broker.publish(f"{prefix}.a", b"x", delay=5)
    assert (caught.value.stream, caught.value.flag) == (name, "allow_msg_schedules")
    assert name in str(caught.value) and "allow_msg_schedules" in str(caught.value)
    literal = name + "L"  # only literal subjects: nowhere to keep a schedule of its own
    other = await make_broker(
        streams=[StreamConfig(name=literal, subjects=[f"{prefix}l.a", f"{prefix}l.b"], allow_msg_schedules=True)]
    )
    with pytest.raises(NoStreamError, match="wildcard subject"):
        await other.publish(f"{prefix}l.a", b"x", delay=5)


def _past() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)


@pytest.mark.parametrize(
    "options",
    [
        {"delay": 0},
        {"delay": -1.0},
        {"delay": dt.timedelta(0)},
        {"delay": "5"},
        {"delay": True},
        {"delay": float("nan")},
        {"at": dt.datetime(2099, 1, 1)},  # naive
        {"at": "2099-01-01T00:00:00Z"},
        {"at": "past"},
        {"delay": 5, "at": dt.datetime(2099, 1, 1, tzinfo=dt.UTC)},
        {"delay": 5, "ttl": 10},
        {"delay": 5, "expected_last_subject_sequence": 0},
    ],
)
async def test_bad_delays_are_refused_before_sending(
    make_broker: BrokerFactory, prefix: str, options: dict[str, Any]
) -> None:
    broker = await make_broker()
    if options.get("at") == "past":
        options = {"at": _past()}
    with pytest.raises(InvalidArgumentError):
        await broker.publish(f"{prefix}.a", b"x", **options)
    with pytest.raises(InvalidArgumentError):
        await broker.publish_many([(f"{prefix}.a", b"ok"), (f"{prefix}.a", b"x", options)])
    with pytest.raises(UnknownOptionError, match="delay"):
        await broker.publish_many([(f"{prefix}.a", b"x", {"dealy": 5})])
    with pytest.raises(InvalidArgumentError, match="dict of options"):
        await broker.publish_many([(f"{prefix}.a", b"x", 5)])  # type: ignore[list-item]
    recorder = Recorder()
    await broker.subscribe(f"{prefix}.a", recorder, queue=f"{prefix}-q")
    await broker.publish(f"{prefix}.a", b"after")
    await broker.wait_until_idle()
    assert recorder.bodies == [b"after"]  # nothing of the refused ones was stored


async def test_a_server_too_old_for_schedules_says_the_feature_and_version(prefix: str) -> None:
    async with InMemoryBroker(server_version=(2, 11, 4)) as broker:
        with pytest.raises(ServerVersionError, match=r"message schedules needs nats-server 2\.12\.0.*2\.11\.4"):
            await broker.publish(f"{prefix}.a", b"x", delay=5)
        with pytest.raises(ServerVersionError):
            await broker.publish_many([(f"{prefix}.a", b"x", {"delay": 5})])


async def test_a_delayed_message_is_delivered_while_no_app_runs(
    brokers: Any, admin: JetStreamManager, prefix: str
) -> None:
    """The server keeps the schedule and publishes it to its target with every broker disconnected."""
    subject = f"{prefix}.reminders"
    broker = brokers()
    async with broker:
        ack = await broker.publish(subject, b"due", msg_id=f"{prefix}-r1", delay=1.0)
        again = await broker.publish(subject, b"due", msg_id=f"{prefix}-r1", delay=1.0)  # a retry: deduplicated
        assert again.duplicate and again.seq == ack.seq
    # no broker connected from here on

    async def delivered() -> None:
        try:
            found = await admin.get_last_msg(ack.stream, subject)
        except nats.js.errors.NotFoundError:
            raise AssertionError("not delivered yet") from None
        assert found.data == b"due"
        assert found.headers is not None and "Nats-Scheduler" in found.headers

    await eventually(delivered, timeout=10.0)
    with pytest.raises(nats.js.errors.NotFoundError):  # the schedule itself is purged once it fired
        await admin.get_msg(ack.stream, ack.seq)
    info = await admin.stream_info(ack.stream)
    assert info.state.messages == 1  # one delivered copy, not two
