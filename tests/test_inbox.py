"""The idempotent inbox on both brokers and both databases: each handler effect once, redeliveries acked
without running the handler, the outbox inside the handler's transaction (consume-transform-produce)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import Depends
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from jetstream_fastapi import Ack, InMemoryBroker, ManualClock, Message
from jetstream_fastapi.inbox import Inbox, KeyValueInbox, message_identity
from jetstream_fastapi.integration.injection import HandlerPlan
from jetstream_fastapi.outbox import Outbox
from tests.conftest import FAST_BACKOFF, WAIT, BrokerFactory
from tests.test_outbox import Received

invoices = Table("invoices", MetaData(), Column("id", Integer, primary_key=True), Column("order", String(50)))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    made = create_async_engine(database_url)
    async with made.begin() as connection:
        await connection.run_sync(invoices.metadata.create_all)
    yield made
    await made.dispose()


@pytest.fixture
async def inbox(engine: AsyncEngine) -> Inbox:
    made = Inbox(async_sessionmaker(engine))
    await made.create_tables()
    return made


class LoseTheFirstAck:
    """A dependency whose cleanup runs after the inbox's commit and fails once: the message was handled and
    committed, but it is not acked, as when the process dies between its commit and its ack."""

    def __init__(self) -> None:
        self.failed: set[str] = set()

    async def __call__(self, message: Message) -> AsyncIterator[None]:
        yield
        if message.msg_id not in self.failed:
            self.failed.add(str(message.msg_id))
            raise RuntimeError("the process died before the ack")


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(invoices))).scalar_one())


async def test_a_redelivery_after_the_commit_is_acked_without_running_the_handler(
    make_broker: BrokerFactory, engine: AsyncEngine, inbox: Inbox, prefix: str
) -> None:
    broker = await make_broker()
    lose = LoseTheFirstAck()
    runs: list[int] = []

    async def bill(
        message: Message,
        _: None = Depends(lose),
        session: AsyncSession = Depends(inbox.session),
    ) -> None:
        runs.append(message.attempt)
        await session.execute(insert(invoices).values(order=message.body.decode()))

    acked = await _publish_until_acked_unrun(broker, bill, f"{prefix}.orders", "billing")
    assert runs == [1]  # the second delivery did not run the handler
    assert acked == [2]
    assert await _count(engine) == 1


async def _publish_until_acked_unrun(broker: Any, handler: Any, subject: str, queue: str) -> list[int]:
    """Subscribe ``handler``, publish one message, wait until an inbox acked a delivery without running the
    handler, and until idle; the attempts so acked."""
    handled = HandlerPlan(handler).bind(broker, {})
    acked: list[int] = []
    done = asyncio.Event()

    async def watch(message: Message) -> None:
        try:
            await handled(message)
        except Ack:
            acked.append(message.attempt)  # the inbox knew it: acked, the handler not run
            done.set()
            raise

    await broker.subscribe(subject, watch, queue=queue)
    await broker.publish(subject, "order-1")
    async with asyncio.timeout(WAIT):
        await done.wait()
    await broker.wait_until_idle(WAIT)
    return acked


async def test_a_failed_handler_rolls_back_its_effect_and_its_inbox_row(
    make_broker: BrokerFactory, engine: AsyncEngine, inbox: Inbox, prefix: str
) -> None:
    broker = await make_broker()
    runs: list[int] = []

    async def bill(message: Message, session: AsyncSession = Depends(inbox.session)) -> None:
        runs.append(message.attempt)
        await session.execute(insert(invoices).values(order=message.body.decode()))
        if message.attempt == 1:
            raise RuntimeError("the payment service is down")

    await _handle_one(broker, bill, f"{prefix}.orders", "billing")
    assert runs == [1, 2]
    assert await _count(engine) == 1


async def _handle_one(broker: Any, handler: Any, subject: str, queue: str) -> None:
    """Subscribe ``handler``, publish one message, wait until it is settled."""
    await broker.subscribe(subject, HandlerPlan(handler).bind(broker, {}), queue=queue)
    await broker.publish(subject, "order-1")
    await broker.wait_until_idle(WAIT)


async def test_what_a_handler_publishes_through_the_outbox_leaves_once(
    make_broker: BrokerFactory, engine: AsyncEngine, inbox: Inbox, prefix: str
) -> None:
    broker = await make_broker()
    outbox = Outbox(engine, poll_interval=0.5, lease_ttl=2.0)
    await outbox.create_tables()
    lose = LoseTheFirstAck()
    received = Received()
    await broker.subscribe(f"{prefix}.invoices", received.handler, queue="reader")

    async def bill(
        message: Message,
        _: None = Depends(lose),
        session: AsyncSession = Depends(inbox.session),
    ) -> None:
        await session.execute(insert(invoices).values(order=message.body.decode()))
        await outbox.publish(session, f"{prefix}.invoices", f"invoice for {message.body.decode()}")

    await broker.subscribe(f"{prefix}.orders", HandlerPlan(bill).bind(broker, {}), queue="billing")
    await outbox.start(broker)
    try:
        for n in range(3):
            await broker.publish(f"{prefix}.orders", f"order-{n}")
        await received.until(lambda: len(received.messages) == 3, "one invoice event per order")
        await broker.wait_until_idle(WAIT)
    finally:
        await outbox.stop()
    assert sorted(received.bodies()) == [f"invoice for order-{n}" for n in range(3)]
    assert await _count(engine) == 3


async def test_rows_older_than_the_retention_are_pruned(engine: AsyncEngine) -> None:
    inbox = Inbox(async_sessionmaker(engine), retention=60.0)
    await inbox.create_tables()
    async with inbox.sessions() as session, session.begin():
        await session.execute(insert(inbox.table).values(consumer="c", message="old", handled_at=100.0))
        await session.execute(insert(inbox.table).values(consumer="c", message="new", handled_at=1000.0))
    assert await inbox.prune(now=1030.0) == 1
    async with engine.connect() as connection:
        assert [row.message for row in await connection.execute(select(inbox.table))] == ["new"]


def test_the_identity_is_the_msg_id_or_stream_and_sequence() -> None:
    from jetstream_fastapi import Delivery

    delivery = Delivery("ORDERS", 7, 1, 0, consumer="billing")
    assert message_identity(Message(b"", {"Nats-Msg-Id": "m-1"}, "s", delivery)) == ("billing", "m-1")
    assert message_identity(Message(b"", {}, "s", delivery)) == ("billing", "ORDERS#7")
    with pytest.raises(ValueError, match="delivered message"):
        message_identity(Message(b""))


# -- the Key-Value inbox (no database) -----------------------------------------------------------------


async def test_kv_create_lets_the_first_writer_win_on_both(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    bucket = f"b{prefix[-8:]}"
    assert await broker.kv_get(bucket, "billing.m1") is None
    assert await broker.kv_create(bucket, "billing.m1", b"first", ttl=60) is True
    assert await broker.kv_create(bucket, "billing.m1", b"second", ttl=60) is False
    assert await broker.kv_get(bucket, "billing.m1") == b"first"
    with pytest.raises(ValueError, match="ttl"):
        await broker.kv_create(bucket, "k", ttl=0.5)
    with pytest.raises(ValueError, match="key"):
        await broker.kv_get(bucket, "a b")
    with pytest.raises(ValueError, match="bucket"):
        await broker.kv_get("a.b", "k")


async def test_kv_inbox_acks_a_redelivery_of_completed_work_without_running_the_handler(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker()
    inbox = KeyValueInbox(f"b{prefix[-8:]}")
    lose = LoseTheFirstAck()
    runs: list[int] = []

    async def mail(message: Message, _: None = Depends(lose), __: None = Depends(inbox.guard)) -> None:
        runs.append(message.attempt)  # the guard's clean-up (the record) runs before lose's fails

    assert await _publish_until_acked_unrun(broker, mail, f"{prefix}.orders", "mailer") == [2]
    assert runs == [1]


async def test_kv_inbox_records_nothing_for_a_handler_that_raised(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    inbox = KeyValueInbox(f"b{prefix[-8:]}")
    runs: list[int] = []

    async def mail(message: Message, _: None = Depends(inbox.guard)) -> None:
        runs.append(message.attempt)
        if message.attempt == 1:
            raise RuntimeError("the mail server is down")

    await _handle_one(broker, mail, f"{prefix}.orders", "mailer")
    assert runs == [1, 2]


async def test_kv_inbox_is_at_least_once_a_lost_record_runs_the_handler_again(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # What the docs promise and no more: the record is a write of its own, after the effect.
    inbox = KeyValueInbox("mail")
    runs: list[int] = []
    async with InMemoryBroker(backoff=FAST_BACKOFF) as broker:

        async def back_after_the_record() -> AsyncIterator[None]:
            yield  # its clean-up runs after the guard's: NATS comes back once the record failed
            if broker.faults.connection_dropped:
                broker.faults.restore_connection()

        async def mail(
            message: Message, _: None = Depends(back_after_the_record), __: None = Depends(inbox.guard)
        ) -> None:
            runs.append(message.attempt)
            if len(runs) == 1:
                broker.faults.drop_connection()  # after the effect: the record cannot be written

        await broker.subscribe(f"{prefix}.orders", HandlerPlan(mail).bind(broker, {}), queue="mailer")
        ack = await broker.publish(f"{prefix}.orders", "order-1")
        await broker.wait_until_idle(WAIT)
        assert "handled, but not recorded (a redelivery would run it again)" in caplog.text
        for _ in range(2):  # as after a lost ack: the first redelivery runs it again, and is recorded
            broker.faults.redeliver(ack)
            await broker.wait_until_idle(WAIT)
    assert len(runs) == 2


async def test_kv_inbox_forgets_after_its_retention(prefix: str) -> None:
    clock = ManualClock()
    inbox = KeyValueInbox("mail", retention=60)
    async with InMemoryBroker(clock=clock) as broker:
        assert await broker.kv_create(inbox.bucket, "mailer.m", ttl=inbox.retention)
        await clock.advance(59)
        assert await broker.kv_get(inbox.bucket, "mailer.m") == b""
        await clock.advance(1)
        assert await broker.kv_get(inbox.bucket, "mailer.m") is None
        assert await broker.kv_create(inbox.bucket, "mailer.m", ttl=inbox.retention)


def test_kv_inbox_keys_are_valid_keys_for_any_consumer_and_identity() -> None:
    assert KeyValueInbox.key("billing", "m-1") == f"billing.{hashlib.sha256(b'm-1').hexdigest()}"
    odd = KeyValueInbox.key("bill#ing", "ORDERS#7")
    consumer, digest = odd.split(".")
    assert len(consumer) == 32 and len(digest) == 64
    with pytest.raises(ValueError, match="bucket"):
        KeyValueInbox("a.b")
    with pytest.raises(ValueError, match="retention"):
        KeyValueInbox(retention=0.5)
