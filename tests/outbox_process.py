"""Processes for tests/test_outbox_processes.py: run as a script, never imported by pytest.

``python tests/outbox_process.py orders <database-url> <nats-url> <prefix> <seed> <count> <kill-after>``
    Runs an outbox relay on a JetStream broker and creates ``count`` orders, one transaction each, over
    a few keys; a seeded third of them roll back. Prints ``COMMITTED <key> <msg-id>`` after each commit
    and ``ROLLED_BACK <key> <msg-id>`` after each rollback. Right after commit number ``kill-after`` it
    SIGKILLs itself: that order is committed and its relay has not published it (the relay runs only when
    this coroutine yields), while earlier rows may be published, published but not deleted, or waiting.

``python tests/outbox_process.py billing <database-url> <nats-url> <subject> <kill-after>``
    Consumes ``subject`` on queue ``billing`` with a handler that writes an invoice through the inbox;
    right after the inbox committed message number ``kill-after`` (before its ack) it SIGKILLs itself.
    Prints ``BILLED <order>`` after each commit.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections.abc import AsyncIterator

from fastapi import Depends
from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.inbox import Inbox
from jetstream_fastapi.integration.injection import HandlerPlan
from jetstream_fastapi.outbox import Outbox

metadata = MetaData()
orders = Table("orders", metadata, Column("id", Integer, primary_key=True), Column("key", String(20)))
invoices = Table("invoices", metadata, Column("id", Integer, primary_key=True), Column("order", String(100)))
KEYS = ("a", "b", "c", "d")


def say(*words: object) -> None:
    print(*words, flush=True)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def create_orders(url: str, nats_url: str, prefix: str, seed: int, count: int, kill_after: int) -> None:
    rng = random.Random(seed)
    engine = create_async_engine(url)
    outbox = Outbox(engine, poll_interval=0.2, lease_ttl=1.0, batch_size=5)
    broker = JetStreamBroker(nats_url)
    await broker.connect()
    await outbox.start(broker)
    sessions = async_sessionmaker(engine)
    committed = 0
    for number in range(count):
        key = rng.choice(KEYS)
        roll_back = rng.random() < 0.33
        async with sessions() as session, session.begin():
            await session.execute(insert(orders).values(key=key))
            msg_id = await outbox.publish(session, f"{prefix}.{key}", f"{key}-{number}", key=key)
            if roll_back:
                await session.rollback()
        if roll_back:
            say("ROLLED_BACK", key, msg_id)
            continue
        committed += 1
        say("COMMITTED", key, msg_id)
        if committed == kill_after:
            die()  # committed, not yet published: the relay task has not run since
        await asyncio.sleep(rng.random() * 0.01)  # let the relay publish some, in between
    say("DONE")
    await asyncio.Event().wait()


async def bill(url: str, nats_url: str, subject: str, kill_after: int) -> None:
    engine = create_async_engine(url)
    inbox = Inbox(async_sessionmaker(engine))
    broker = JetStreamBroker(nats_url, ack_wait=1.0, fetch_wait=1.0)
    await broker.connect()
    billed = 0

    async def crash_before_the_ack(message: Message) -> AsyncIterator[None]:
        nonlocal billed
        yield
        billed += 1  # here the inbox committed (its cleanup ran first) and the ack is not sent yet
        say("BILLED", message.body.decode())
        if billed == kill_after:
            die()

    async def handler(
        message: Message, _: None = Depends(crash_before_the_ack), session: AsyncSession = Depends(inbox.session)
    ) -> None:
        await session.execute(insert(invoices).values(order=message.body.decode()))

    await broker.subscribe(subject, HandlerPlan(handler).bind(broker, {}), queue="billing", concurrency=1)
    say("READY")
    await asyncio.Event().wait()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "orders":
        asyncio.run(create_orders(args[0], args[1], args[2], int(args[3]), int(args[4]), int(args[5])))
    elif mode == "billing":
        asyncio.run(bill(args[0], args[1], args[2], int(args[3])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
