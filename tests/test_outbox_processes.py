"""Crash tests of the outbox and the inbox on real processes (tests/outbox_process.py), a real nats-server
and both databases (a SQLite file, a real PostgreSQL): SIGKILL between a commit and its publish, and a
consumer SIGKILLed between its commit and its ack. Seeded and bounded; each wait has a timeout.

After each: every committed order's event is in the stream exactly once (by msg id), in commit order per
key; no event of a rolled-back transaction; every handler effect applied once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import Depends
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.inbox import Inbox
from jetstream_fastapi.integration.injection import HandlerPlan
from jetstream_fastapi.outbox import Outbox
from jetstream_fastapi.server import NatsServer
from tests.conftest import WAIT
from tests.outbox_process import invoices, metadata
from tests.test_outbox import Received

SCRIPT = Path(__file__).with_name("outbox_process.py")
ROOT = SCRIPT.parent.parent
BOUND = 60.0  # seconds a child may take at most


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    made = create_async_engine(database_url)
    async with made.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield made
    await made.dispose()


async def _run_until_killed(*args: str) -> list[list[str]]:
    """Run the child to its SIGKILL; its output lines, split in words."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), BOUND)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    assert process.returncode == -signal.SIGKILL, text
    return [line.split() for line in text.splitlines()]


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_sigkill_between_the_commit_and_the_publish(
    engine: AsyncEngine, database_url: str, nats_server: NatsServer, prefix: str, seed: int
) -> None:
    outbox = Outbox(engine, poll_interval=0.2, lease_ttl=1.0, batch_size=5)
    await outbox.create_tables()
    kill_after = 8 + seed % 5
    lines = await _run_until_killed("orders", database_url, nats_server.url, prefix, str(seed), "40", str(kill_after))
    committed = [(words[1], words[2]) for words in lines if words[0] == "COMMITTED"]
    rolled_back = {words[2] for words in lines if words[0] == "ROLLED_BACK"}
    assert len(committed) == kill_after
    assert (await outbox.stats()).backlog >= 1  # at least the last commit was never published

    broker = JetStreamBroker(nats_server.url, fetch_wait=1.0)
    await broker.connect()
    received = Received()
    try:
        await outbox.start(broker)  # the instance that comes back
        await broker.subscribe(f"{prefix}.>", received.handler, queue="audit", concurrency=1)
        await received.until(lambda: len(received.messages) >= len(committed), "every committed event", BOUND)
        await broker.wait_until_idle(WAIT)
        await outbox.stop()
    finally:
        await broker.disconnect()

    in_stream = sorted(received.messages, key=lambda m: m.delivery.sequence if m.delivery else 0)
    ids = Counter(m.msg_id for m in in_stream)
    assert all(count == 1 for count in ids.values()), ids
    assert set(ids) == {msg_id for _, msg_id in committed}
    assert not set(ids) & rolled_back
    for key in {key for key, _ in committed}:
        wanted = [msg_id for k, msg_id in committed if k == key]
        assert [m.msg_id for m in in_stream if m.subject == f"{prefix}.{key}"] == wanted
    assert (await outbox.stats()).backlog == 0


@pytest.mark.parametrize("seed", [21, 22])
async def test_a_consumer_sigkilled_between_its_commit_and_its_ack(
    engine: AsyncEngine, database_url: str, nats_server: NatsServer, prefix: str, seed: int
) -> None:
    inbox = Inbox(async_sessionmaker(engine))
    await inbox.create_tables()
    subject, count, kill_after = f"{prefix}.orders", 12, 3 + seed % 4
    broker = JetStreamBroker(nats_server.url, fetch_wait=1.0, ack_wait=1.0)
    await broker.connect()
    try:
        await broker.publish_many((subject, f"order-{n}") for n in range(count))
        lines = await _run_until_killed("billing", database_url, nats_server.url, subject, str(kill_after))
        billed = [words[1] for words in lines if words[0] == "BILLED"]
        assert len(billed) == kill_after  # the last one committed, never acked

        runs: list[str] = []
        done = asyncio.Event()

        async def handler(message: Message, session: AsyncSession = Depends(inbox.session)) -> None:
            runs.append(message.body.decode())
            await session.execute(insert(invoices).values(order=message.body.decode()))
            if len(runs) == count - kill_after:
                done.set()

        await broker.subscribe(subject, HandlerPlan(handler).bind(broker, {}), queue="billing", concurrency=1)
        async with asyncio.timeout(BOUND):
            await done.wait()
        await broker.wait_until_idle(BOUND)
    finally:
        await broker.disconnect()
    assert not set(runs) & set(billed)  # the redelivered, committed one was acked without running
    async with engine.connect() as connection:
        rows = (await connection.execute(select(invoices.c.order, func.count()).group_by(invoices.c.order))).all()
    assert sorted(order for order, _ in rows) == sorted(f"order-{n}" for n in range(count))
    assert all(times == 1 for _, times in rows), rows
