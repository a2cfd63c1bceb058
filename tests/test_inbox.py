"""The idempotent inbox on both brokers and both databases: each handler effect once, redeliveries acked
without running the handler, the outbox inside the handler's transaction (consume-transform-produce)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from fastapi import Depends
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from jetstream_fastapi import Ack, Message
from jetstream_fastapi.inbox import Inbox, message_identity
from jetstream_fastapi.integration.injection import HandlerPlan
from jetstream_fastapi.outbox import Outbox
from tests.conftest import WAIT, BrokerFactory
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
    done = asyncio.Event()

    async def bill(
        message: Message,
        _: None = Depends(lose),
        session: AsyncSession = Depends(inbox.session),
    ) -> None:
        runs.append(message.attempt)
        await session.execute(insert(invoices).values(order=message.body.decode()))

    handled = HandlerPlan(bill).bind(broker, {})
    acked: list[int] = []

    async def watch(message: Message) -> None:
        try:
            await handled(message)
        except Ack:
            acked.append(message.attempt)  # the inbox knew it: acked, the handler not run
            done.set()
            raise

    await broker.subscribe(f"{prefix}.orders", watch, queue="billing")
    await broker.publish(f"{prefix}.orders", "order-1")
    async with asyncio.timeout(WAIT):
        await done.wait()
    await broker.wait_until_idle(WAIT)
    assert runs == [1]  # the second delivery did not run the handler
    assert acked == [2]
    assert await _count(engine) == 1


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

    await broker.subscribe(f"{prefix}.orders", HandlerPlan(bill).bind(broker, {}), queue="billing")
    await broker.publish(f"{prefix}.orders", "order-1")
    await broker.wait_until_idle(WAIT)
    assert runs == [1, 2]
    assert await _count(engine) == 1


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
