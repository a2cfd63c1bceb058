"""Processes for tests/test_outbox_processes.py: run as a script, never imported by pytest.

``python tests/outbox_process.py orders <database-url> <nats-url> <prefix> <seed> <count> <kill-after>``
    Runs an outbox relay on a JetStream broker and creates ``count`` orders, one transaction each, over
    a few keys; a seeded third of them roll back. Prints ``COMMITTED <key> <msg-id>`` after each commit
    and ``ROLLED_BACK <key> <msg-id>`` after each rollback. Right after commit number ``kill-after`` it
    SIGKILLs itself, inside that commit: that order is committed and its relay has not published it, while
    earlier rows may be published, published but not deleted, or waiting.

``python tests/outbox_process.py billing <database-url> <nats-url> <subject> <kill-after>``
    Consumes ``subject`` on queue ``billing`` with a handler that writes an invoice through the inbox;
    right after the inbox committed message number ``kill-after`` (before its ack) it SIGKILLs itself.
    Prints ``BILLED <order>`` after each commit.

``python tests/outbox_process.py feed <database-url> <nats-url> <prefix> <seed>``
    Runs an outbox relay and creates orders on command, read from stdin one a line: ``orders <n>`` creates
    ``n`` orders as ``orders`` mode does (``COMMITTED``/``ROLLED_BACK`` lines), then prints ``CREATED``;
    ``quit`` stops the relay and exits (``BYE``). The relay's warnings are printed as ``LOG <text>``. The
    orders are written through a ``pool_pre_ping`` engine (a write after a database restart never meets a
    dead pooled connection), the relay through an engine of its own, without.

``python tests/outbox_process.py relay <database-url> <nats-url> <kill-after>``
    Runs only a relay (batches of 20, a 1 s lease) and prints ``ACKED <msg-id>`` after each PubAck; right
    after PubAck number ``kill-after`` it SIGKILLs itself: mid-batch, holding the leases of its batch's rows,
    some of them published and none deleted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert
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


class SayWarnings(logging.Handler):
    """Prints the library's warnings (a relay's trouble) for the test to wait on."""

    def emit(self, record: logging.LogRecord) -> None:
        say("LOG", record.getMessage().replace("\n", " "))


async def create_orders(url: str, nats_url: str, prefix: str, seed: int, count: int, kill_after: int) -> None:
    rng = random.Random(seed)
    engine = create_async_engine(url)
    outbox = Outbox(engine, poll_interval=0.2, lease_ttl=0.5, batch_size=5)  # a short lease: a quick takeover
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
            elif committed + 1 == kill_after:
                # Die inside the commit, right after the database took it: no other task ran since, so
                # the relay has not published this row. (Dying after `session.begin()` returned would
                # leave the relay the session's own clean-up, a round trip, to publish and delete it.)
                last = f"{key} {msg_id}"
                event.listen(session.sync_session, "after_commit", lambda _, last=last: (say("COMMITTED", last), die()))
        if roll_back:
            say("ROLLED_BACK", key, msg_id)
            continue
        committed += 1
        say("COMMITTED", key, msg_id)
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


async def feed(url: str, nats_url: str, prefix: str, seed: int) -> None:
    logging.getLogger("jetstream_fastapi").addHandler(SayWarnings(logging.WARNING))
    rng = random.Random(seed)
    writes = create_async_engine(url, pool_pre_ping=True)
    outbox = Outbox(create_async_engine(url), poll_interval=0.2, lease_ttl=1.0, batch_size=10)
    # A short reconnect wait and publish timeout: the relay notices an outage and its end within a second.
    broker = JetStreamBroker(nats_url, reconnect_time_wait=0.1, publish_timeout=1.0)
    await broker.connect()
    await outbox.start(broker)
    sessions = async_sessionmaker(writes)
    number = 0
    commands = _lines()
    async for command in commands:
        if command == "quit":
            break
        for _ in range(int(command.split()[1])):
            number += 1
            key, roll_back = rng.choice(KEYS), rng.random() < 0.33
            async with sessions() as session, session.begin():
                await session.execute(insert(orders).values(key=key))
                msg_id = await outbox.publish(session, f"{prefix}.{key}", f"{key}-{number}", key=key)
                if roll_back:
                    await session.rollback()
            say("ROLLED_BACK" if roll_back else "COMMITTED", key, msg_id)
            await asyncio.sleep(rng.random() * 0.005)  # let the relay publish some, in between
        say("CREATED")
    await outbox.stop()
    await broker.disconnect()
    say("BYE")


async def _lines() -> AsyncIterator[str]:
    """stdin, one line at a time, without blocking the loop."""
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        yield line.strip()


async def relay(url: str, nats_url: str, kill_after: int) -> None:
    outbox = Outbox(create_async_engine(url), poll_interval=0.2, lease_ttl=1.0, batch_size=20)
    broker = JetStreamBroker(nats_url)
    await broker.connect()
    publish, acked = broker.publish, 0

    async def publish_then_die(subject: str, message: Any, **options: Any) -> Any:
        nonlocal acked
        ack = await publish(subject, message, **options)
        acked += 1
        say("ACKED", options["msg_id"])
        if acked == kill_after:
            die()  # the batch's rows are leased to this relay; none of them deleted yet
        return ack

    broker.publish = publish_then_die  # type: ignore[method-assign]
    await outbox.start(broker)
    await asyncio.Event().wait()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "orders":
        asyncio.run(create_orders(args[0], args[1], args[2], int(args[3]), int(args[4]), int(args[5])))
    elif mode == "billing":
        asyncio.run(bill(args[0], args[1], args[2], int(args[3])))
    elif mode == "feed":
        asyncio.run(feed(args[0], args[1], args[2], int(args[3])))
    elif mode == "relay":
        asyncio.run(relay(args[0], args[1], int(args[2])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
