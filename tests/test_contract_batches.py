"""Atomic batches (``publish_batch``): all stored or none, on both brokers; one real-server test."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js.api import StreamConfig
from nats.js.manager import JetStreamManager

from jetstream_fastapi import (
    BatchStoredError,
    InMemoryBroker,
    InvalidArgumentError,
    PublishConflictError,
    ServerVersionError,
    StreamFlagError,
    UnknownOptionError,
)
from tests.conftest import BrokerFactory
from tests.test_contract import Recorder


async def test_a_batch_is_stored_whole_with_every_puback_in_order(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    recorder = Recorder()
    await broker.subscribe(f"{prefix}.ledger.>", recorder, queue=f"{prefix}-ledger")
    acks = await broker.publish_batch([(f"{prefix}.ledger.debit", b"-10"), (f"{prefix}.ledger.credit", b"+10")])
    assert [ack.seq for ack in acks] == [acks[0].seq, acks[0].seq + 1]
    assert len({ack.stream for ack in acks}) == 1
    await recorder.wait_for(2)
    assert recorder.bodies == [b"-10", b"+10"]


async def test_a_batch_with_one_failing_expectation_stores_nothing(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    first = await broker.publish(f"{prefix}.acct.1", b"opened")
    batch = [
        (f"{prefix}.acct.2", b"a"),
        (f"{prefix}.acct.1", b"b", {"expected_last_subject_sequence": first.seq + 100}),  # stale
        (f"{prefix}.acct.3", b"c"),
    ]
    with pytest.raises(PublishConflictError):
        await broker.publish_batch(batch)
    recorder = Recorder()
    await broker.subscribe(f"{prefix}.acct.>", recorder, queue=f"{prefix}-acct")
    await recorder.wait_for(1)
    await broker.wait_until_idle()
    assert recorder.bodies == [b"opened"]
    ok = await broker.publish_batch(
        [(f"{prefix}.acct.2", b"a"), (f"{prefix}.acct.1", b"b", {"expected_last_subject_sequence": first.seq})]
    )
    assert ok[0].seq == first.seq + 1  # the refused batch left no sequence behind


async def test_a_retried_stored_batch_is_detected(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    batch = [(f"{prefix}.a", b"1"), (f"{prefix}.b", b"2")]
    acks = await broker.publish_batch(batch, batch_id=f"{prefix}-b1")
    with pytest.raises(BatchStoredError) as caught:
        await broker.publish_batch(batch, batch_id=f"{prefix}-b1")
    assert caught.value.batch_id == f"{prefix}-b1" and caught.value.stream == acks[0].stream
    again = await broker.publish_batch(batch)  # a fresh batch id: a new batch
    assert again[0].seq == acks[-1].seq + 1


async def test_a_stream_without_allow_atomic_names_stream_and_flag(make_broker: BrokerFactory, prefix: str) -> None:
    name = prefix.upper()
    broker = await make_broker(streams=[StreamConfig(name=name, subjects=[f"{prefix}.>"])])
    with pytest.raises(StreamFlagError) as caught:
        await broker.publish_batch([(f"{prefix}.a", b"x")])
    assert (caught.value.stream, caught.value.flag) == (name, "allow_atomic")


async def test_bad_batches_are_refused_before_sending(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    with pytest.raises(InvalidArgumentError, match="at least one"):
        await broker.publish_batch([])
    with pytest.raises(InvalidArgumentError, match="at most 1000"):
        await broker.publish_batch([(f"{prefix}.a", b"x")] * 1001)
    with pytest.raises(UnknownOptionError, match="expected_last_subject_sequence"):
        await broker.publish_batch([(f"{prefix}.a", b"x", {"expected_last_subject_seq": 1})])
    with pytest.raises(InvalidArgumentError):
        await broker.publish_batch([(f"{prefix}.a", b"x", {"expected_last_sequence": -1})])
    with pytest.raises(InvalidArgumentError, match="batch_id"):
        await broker.publish_batch([(f"{prefix}.a", b"x")], batch_id="")
    await broker.publish(f"{prefix}x.a", b"x")  # another auto-provisioned stream
    with pytest.raises(InvalidArgumentError, match="one stream"):
        await broker.publish_batch([(f"{prefix}.a", b"x"), (f"{prefix}x.a", b"y")])
    recorder = Recorder()
    await broker.subscribe(f"{prefix}.a", recorder, queue=f"{prefix}-q")
    await broker.publish(f"{prefix}.a", b"after")
    await broker.wait_until_idle()
    assert recorder.bodies == [b"after"]  # nothing of the refused batches was stored


async def test_a_full_batch_of_1000(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    acks = await broker.publish_batch([(f"{prefix}.bulk", str(n).encode()) for n in range(1000)])
    assert [ack.seq for ack in acks] == list(range(acks[0].seq, acks[0].seq + 1000))


async def test_a_server_too_old_for_batches_says_the_feature_and_version(prefix: str) -> None:
    async with InMemoryBroker(server_version=(2, 11, 0)) as broker:
        with pytest.raises(ServerVersionError, match=r"atomic batch publish needs nats-server 2\.12\.0"):
            await broker.publish_batch([(f"{prefix}.a", b"x")])


async def test_a_batch_with_one_invalid_message_stores_nothing_on_the_server(
    brokers: Any, admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers()
    async with broker:
        before = await broker.publish(f"{prefix}.x", b"before")
        with pytest.raises(PublishConflictError):
            await broker.publish_batch(
                [(f"{prefix}.x", b"1"), (f"{prefix}.y", b"2"), (f"{prefix}.x", b"3", {"expected_last_sequence": 1})]
            )
        info = await admin.stream_info(before.stream)
        assert (info.state.messages, info.state.last_seq) == (1, before.seq)
