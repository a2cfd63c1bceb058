"""Per-message TTL and optimistic concurrency on ``publish``, on both brokers (and one real-server TTL test)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats.js.errors
import pytest
from nats.js.api import StreamConfig
from nats.js.manager import JetStreamManager

from jetstream_fastapi import (
    InMemoryBroker,
    InvalidArgumentError,
    Message,
    PublishConflictError,
    PublishTimeoutError,
    ServerVersionError,
    StreamFlagError,
)
from jetstream_fastapi.clock import ManualClock
from tests.conftest import BrokerFactory, eventually
from tests.test_contract import Recorder


async def test_a_stale_expected_last_subject_sequence_fails_with_the_current_one(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker()
    subject = f"{prefix}.account.42"
    first = await broker.publish(subject, b"v1", expected_last_subject_sequence=0)  # none on it yet
    await broker.publish(f"{prefix}.account.43", b"other")  # another subject: does not count
    with pytest.raises(PublishConflictError) as caught:
        await broker.publish(subject, b"v2 from a stale reader", expected_last_subject_sequence=0)
    assert caught.value.current_sequence == first.seq
    assert caught.value.subject == subject
    second = await broker.publish(subject, b"v2", expected_last_subject_sequence=first.seq)
    assert second.seq > first.seq
    recorder = Recorder()
    await broker.subscribe(subject, recorder, queue=f"{prefix}-reader")
    await broker.wait_until_idle()
    assert recorder.bodies == [b"v1", b"v2"]  # the refused one was not stored


async def test_a_retry_of_a_stored_conditional_publish_is_a_duplicate_not_a_conflict(
    make_broker: BrokerFactory, prefix: str
) -> None:
    # The server checks expectations before its duplicate window: the same msg id again (a retry after a
    # lost PubAck) is refused with the sequence it was stored at; the broker recognises its own message.
    broker = await make_broker()
    subject = f"{prefix}.account.7"
    first = await broker.publish(subject, b"v1", msg_id=f"{prefix}-v1", expected_last_subject_sequence=0)
    again = await broker.publish(subject, b"v1", msg_id=f"{prefix}-v1", expected_last_subject_sequence=0)
    assert again.duplicate and again.seq == first.seq and again.stream == first.stream
    with pytest.raises(PublishConflictError) as caught:  # another writer's message: a real conflict
        await broker.publish(subject, b"v1'", msg_id=f"{prefix}-other", expected_last_subject_sequence=0)
    assert caught.value.current_sequence == first.seq
    assert caught.value.stream == first.stream


async def test_a_timed_out_conditional_publish_retried_by_the_caller_is_stored_once(prefix: str) -> None:
    async with InMemoryBroker() as broker:
        broker.faults.fail_publishes(stored=True)  # stored, but the PubAck is lost
        with pytest.raises(PublishTimeoutError):
            await broker.publish(f"{prefix}.a", b"x", msg_id="m-1", expected_last_subject_sequence=0)
        ack = await broker.publish(f"{prefix}.a", b"x", msg_id="m-1", expected_last_subject_sequence=0)
        assert ack.duplicate and ack.seq == 1


async def test_expected_last_sequence_msg_id_and_stream(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    first = await broker.publish(f"{prefix}.a", b"1", msg_id=f"{prefix}-1")
    with pytest.raises(PublishConflictError) as caught:
        await broker.publish(f"{prefix}.a", b"2", expected_last_sequence=first.seq + 5)
    assert caught.value.current_sequence == first.seq
    second = await broker.publish(f"{prefix}.b", b"2", expected_last_sequence=first.seq)
    assert second.seq == first.seq + 1

    with pytest.raises(PublishConflictError) as caught:
        await broker.publish(f"{prefix}.a", b"3", expected_last_msg_id=f"{prefix}-1")  # the last is "2"'s id now
    assert caught.value.current_sequence is None
    third = await broker.publish(f"{prefix}.a", b"3", msg_id=f"{prefix}-3", expected_last_sequence=second.seq)
    await broker.publish(f"{prefix}.a", b"4", expected_last_msg_id=f"{prefix}-3")

    with pytest.raises(PublishConflictError):
        await broker.publish(f"{prefix}.a", b"5", expected_stream="SOME_OTHER_STREAM")
    ack = await broker.publish(f"{prefix}.a", b"5", expected_stream=third.stream)
    assert ack.stream == third.stream


async def test_a_ttl_message_expires_from_the_stream(make_broker: BrokerFactory, prefix: str) -> None:
    clock = ManualClock() if make_broker.kind == "memory" else None  # type: ignore[attr-defined]
    broker = await make_broker(**({"clock": clock} if clock is not None else {}))
    subject = f"{prefix}.sessions"
    short = await broker.publish(subject, b"short-lived", ttl=1.0)  # the auto-provisioned stream allows TTLs
    await broker.publish(subject, b"kept")
    backend = broker._backend  # the stored messages, as the dead-letter admin reads them
    if clock is not None:
        await clock.advance(0.9)
        assert await backend.read(short.stream, short.seq) is not None
        await clock.advance(0.2)
    else:

        async def gone() -> None:
            assert await backend.read(short.stream, short.seq) is None

        await eventually(gone)
    assert await backend.read(short.stream, short.seq) is None
    recorder = Recorder()
    await broker.subscribe(subject, recorder, queue=f"{prefix}-late")
    await recorder.wait_for(1)
    await broker.wait_until_idle()
    assert recorder.bodies == [b"kept"]


async def test_a_ttl_on_a_stream_without_allow_msg_ttl_names_stream_and_flag(
    make_broker: BrokerFactory, prefix: str
) -> None:
    name = prefix.upper()
    broker = await make_broker(streams=[StreamConfig(name=name, subjects=[f"{prefix}.>"])])
    with pytest.raises(StreamFlagError) as caught:
        await broker.publish(f"{prefix}.a", b"x", ttl=5)
    assert caught.value.stream == name
    assert caught.value.flag == "allow_msg_ttl"
    assert name in str(caught.value) and "allow_msg_ttl" in str(caught.value)
    allowed = prefix.upper() + "TTL"
    other = await make_broker(streams=[StreamConfig(name=allowed, subjects=[f"{prefix}x.>"], allow_msg_ttl=True)])
    assert (await other.publish(f"{prefix}x.a", b"x", ttl=5)).stream == allowed


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("ttl", 0.5),
        ("ttl", 0),
        ("ttl", -3),
        ("ttl", "5"),
        ("ttl", True),
        ("ttl", float("nan")),
        ("ttl", float("inf")),
        ("expected_last_sequence", -1),
        ("expected_last_sequence", "3"),
        ("expected_last_sequence", 1.0),
        ("expected_last_subject_sequence", False),
        ("expected_last_msg_id", ""),
        ("expected_last_msg_id", "a\r\nb"),
        ("expected_stream", "a.b"),
        ("expected_stream", ""),
        ("expected_stream", 7),
    ],
)
async def test_bad_publish_options_are_refused_before_sending(
    make_broker: BrokerFactory, prefix: str, option: str, value: object
) -> None:
    broker = await make_broker()
    with pytest.raises(InvalidArgumentError, match=option if option != "expected_last_msg_id" else "msg_id"):
        await broker.publish(f"{prefix}.a", b"x", **{option: value})
    recorder = Recorder()
    await broker.subscribe(f"{prefix}.a", recorder, queue=f"{prefix}-q")
    await broker.publish(f"{prefix}.a", b"after")
    await broker.wait_until_idle()
    assert recorder.bodies == [b"after"]


async def test_a_server_too_old_for_ttl_says_the_feature_and_version(prefix: str) -> None:
    async with InMemoryBroker(server_version=(2, 10, 22)) as broker:
        with pytest.raises(ServerVersionError, match=r"per-message TTL needs nats-server 2\.11\.0.*2\.10\.22"):
            await broker.publish(f"{prefix}.a", b"x", ttl=5)
        await broker.publish(f"{prefix}.a", b"x", expected_last_subject_sequence=0)  # no minimum for these


async def test_the_jetstream_backend_reports_the_servers_version(brokers: Any, admin_nc: Any) -> None:
    broker = brokers()
    async with broker:
        version = admin_nc.connected_server_version
        assert broker._backend.server_version == (version.major, version.minor, version.patch)
        assert broker._backend.server_version >= (2, 11, 0)


async def test_a_ttl_message_lives_its_ttl_on_the_server(brokers: Any, admin: JetStreamManager, prefix: str) -> None:
    """The server's behaviour: the message is there, then gone within a bounded wait after its TTL."""
    broker = brokers()
    async with broker:
        started = time.monotonic()
        ack = await broker.publish(f"{prefix}.t", Message(body=b"x"), ttl=1)
        stored = await admin.get_msg(ack.stream, ack.seq)
        assert stored.headers is not None and stored.headers.get("Nats-TTL") == "1000ms"

        async def gone() -> None:
            try:
                await admin.get_msg(ack.stream, ack.seq)
            except nats.js.errors.NotFoundError:
                return
            raise AssertionError("still stored")

        await eventually(gone, timeout=10.0)
        print(f"TTL 1 s message gone after {time.monotonic() - started:.2f} s")


async def test_a_held_conditional_publish_that_no_longer_holds_fails_alone_on_restore(prefix: str) -> None:
    async with InMemoryBroker() as broker:
        subject = f"{prefix}.a"
        broker.faults.drop_connection()
        other = asyncio.ensure_future(broker.publish(subject, b"other"))
        held = asyncio.ensure_future(broker.publish(subject, b"held", expected_last_subject_sequence=0))
        await asyncio.sleep(0)  # one loop turn: both publishes reach the held queue (no time passes)
        broker.faults.restore_connection()  # "held" is stored after "other": its condition fails, alone
        with pytest.raises(PublishConflictError):
            await held
        assert (await other).seq == 1
