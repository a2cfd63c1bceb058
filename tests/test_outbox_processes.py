"""Crash tests of the outbox and the inbox on real processes (tests/outbox_process.py), a real nats-server
and both databases (a SQLite file, a real PostgreSQL): SIGKILL between a commit and its publish; a
consumer SIGKILLed between its commit and its ack; NATS stopped for seconds while orders are created; a
relay SIGKILLed mid-batch holding its leases; PostgreSQL restarted under a running relay. Seeded and
bounded; each wait has a timeout, and waits on what the processes print or what the stores hold.

After each: every committed order's event is in the stream exactly once (by msg id), in commit order per
key; no event of a rolled-back transaction; every handler effect applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.inbox import Inbox
from jetstream_fastapi.integration.injection import HandlerPlan
from jetstream_fastapi.outbox import Outbox
from jetstream_fastapi.server import NatsServer
from tests.conftest import WAIT, eventually
from tests.outbox_process import invoices, metadata
from tests.test_outbox import Received

SCRIPT = Path(__file__).with_name("outbox_process.py")
ROOT = SCRIPT.parent.parent
BOUND = 60.0  # seconds a child may take at most
OUTAGE = 2.0  # seconds NATS stays down while orders keep coming (a fault's length, not a wait for work)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    made = create_async_engine(database_url)
    async with made.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield made
    await made.dispose()


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    # A session of its own: a signal meant for the test run's process group (Ctrl-C, a timeout) never
    # reaches the child, and the child's SIGKILL targets its own pid only.
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )


async def _run_until_killed(*args: str) -> list[list[str]]:
    """Run the child to its SIGKILL; its output lines, split in words."""
    process = await _spawn(*args)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), BOUND)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    assert process.returncode == -signal.SIGKILL, text
    return [line.split() for line in text.splitlines()]


@pytest.mark.parametrize("seed", [11, 12])
async def test_sigkill_between_the_commit_and_the_publish(
    engine: AsyncEngine, database_url: str, nats_server: NatsServer, prefix: str, seed: int
) -> None:
    outbox = Outbox(engine, poll_interval=0.2, lease_ttl=0.5, batch_size=5)
    await outbox.create_tables()
    kill_after = 8 + seed % 5
    lines = await _run_until_killed("orders", database_url, nats_server.url, prefix, str(seed), "40", str(kill_after))
    committed = [(words[1], words[2]) for words in lines if words[0] == "COMMITTED"]
    rolled_back = {words[2] for words in lines if words[0] == "ROLLED_BACK"}
    assert len(committed) == kill_after
    assert (await outbox.stats()).backlog >= 1  # at least the last commit was never published

    broker = JetStreamBroker(nats_server.url)
    await broker.connect()
    try:
        await outbox.start(broker)  # the instance that comes back
        # Not only until every event is in the stream: rows the child published but had not deleted yet
        # wait for its lease to run out, then are published again (and deduplicated) and deleted.
        received = await _every_committed_event(outbox, nats_server.url, prefix, len(committed))
    finally:
        await outbox.stop()
        await broker.disconnect()
    _assert_once_in_commit_order(received, committed, rolled_back, prefix)


def _assert_once_in_commit_order(
    received: Received, committed: list[tuple[str, str]], rolled_back: set[str], prefix: str, keyless: str = ""
) -> None:
    """Every committed event in the stream exactly once (by msg id), in commit order per key; none of a
    rolled-back transaction. ``committed``: (key, msg id) in commit order; ``keyless``: the "key" of the
    rows without one (no order promised)."""
    in_stream = sorted(received.messages, key=lambda m: m.delivery.sequence if m.delivery else 0)
    ids = Counter(m.msg_id for m in in_stream)
    assert all(count == 1 for count in ids.values()), [msg_id for msg_id, count in ids.items() if count > 1]
    assert set(ids) == {msg_id for _, msg_id in committed}
    assert not set(ids) & rolled_back
    for key in {key for key, _ in committed} - {keyless}:
        wanted = [msg_id for k, msg_id in committed if k == key]
        assert [m.msg_id for m in in_stream if m.subject == f"{prefix}.{key}"] == wanted, key


@pytest.mark.parametrize("seed", [22])
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


class Child:
    """A running tests/outbox_process.py: its output lines (split in words) as they come, and commands."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[list[str]] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str) -> Child:
        return cls(await _spawn(*args))

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(line.decode(errors="replace").split())
            async with self._changed:
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    @property
    def text(self) -> str:
        return "\n".join(" ".join(words) for words in self.lines)

    def words(self, first: str) -> list[list[str]]:
        return [words for words in self.lines if words and words[0] == first]

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: predicate() or self._reader.done()), BOUND)
            except TimeoutError:
                raise AssertionError(f"{what}: the child printed\n{self.text}") from None
        assert predicate(), f"{what}: the child ended (code {self.process.returncode}) and printed\n{self.text}"

    async def command(self, line: str, answer: str) -> None:
        """Send ``line``; return once the child printed one more ``answer`` line."""
        before = len(self.words(answer))
        assert self.process.stdin is not None
        self.process.stdin.write(f"{line}\n".encode())
        await self.process.stdin.drain()
        await self.until(lambda: len(self.words(answer)) > before, f"{answer} after {line!r}")

    async def exited(self) -> int:
        """The exit code (a negative signal number), within the bound."""
        code = await asyncio.wait_for(self.process.wait(), BOUND)
        await self._reader
        return code

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    def committed(self) -> list[tuple[str, str]]:
        return [(words[1], words[2]) for words in self.words("COMMITTED")]

    def rolled_back(self) -> set[str]:
        return {words[2] for words in self.words("ROLLED_BACK")}


async def _every_committed_event(outbox: Outbox, nats_url: str, prefix: str, count: int) -> Received:
    """What ``prefix.>`` holds once ``count`` events are there and the outbox is empty (every row published
    and deleted), read to the end."""
    broker = JetStreamBroker(nats_url, fetch_wait=1.0)
    await broker.connect()
    received = Received()
    try:
        await broker.subscribe(f"{prefix}.>", received.handler, queue="audit", concurrency=1)
        await received.until(lambda: len(received.messages) >= count, "every committed event", BOUND)

        async def empty() -> None:
            assert (await outbox.stats()).backlog == 0

        await eventually(empty, BOUND)  # the table signals nothing: poll it
        await broker.wait_until_idle(WAIT)
    finally:
        await broker.disconnect()
    return received


async def _quit(child: Child) -> None:
    await child.command("quit", "BYE")
    assert await child.exited() == 0, child.text


@pytest.mark.parametrize("seed", [31])
async def test_nats_down_for_seconds_while_orders_are_created(
    engine: AsyncEngine, database_url: str, fresh_server: NatsServer, prefix: str, seed: int
) -> None:
    outbox = Outbox(engine)
    await outbox.create_tables()
    child = await Child.start("feed", database_url, fresh_server.url, prefix, str(seed))
    try:
        await child.command("orders 8", "CREATED")
        fresh_server.stop(remove_store=False)  # its streams survive: a restart, as in production
        down, before = time.monotonic(), len(child.words("LOG"))
        await child.command("orders 10", "CREATED")
        await child.until(lambda: len(child.words("LOG")) > before, "the relay reports NATS unreachable")
        for _ in range(100):  # orders keep coming while NATS stays down (bounded)
            if time.monotonic() - down >= OUTAGE:
                break
            await child.command("orders 5", "CREATED")
        waiting = (await outbox.stats()).backlog
        fresh_server.start()
        await child.command("orders 8", "CREATED")
        received = await _every_committed_event(outbox, fresh_server.url, prefix, len(child.committed()))
        await _quit(child)
    finally:
        await child.kill()
    assert waiting >= 10  # at least the orders of the outage waited in the table
    _assert_once_in_commit_order(received, child.committed(), child.rolled_back(), prefix)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_relay_sigkilled_mid_batch_holding_leases(
    engine: AsyncEngine, database_url: str, nats_server: NatsServer, prefix: str
) -> None:
    outbox = Outbox(engine, poll_interval=0.2, lease_ttl=1.0, batch_size=20)
    await outbox.create_tables()
    committed: list[tuple[str, str]] = []
    for chunk in range(6):  # 60 rows over four keys and none, committed before any relay runs
        async with AsyncSession(engine) as session, session.begin():
            for n in range(10):
                key = ("a", "b", "c", "d", None)[(chunk * 10 + n) % 5]
                subject = f"{prefix}.{key or 'none'}"
                committed.append((key or "none", await outbox.publish(session, subject, f"{chunk}-{n}", key=key)))
    child = await Child.start("relay", database_url, nats_server.url, "7")
    try:
        await child.until(lambda: len(child.words("ACKED")) >= 1, "the child relay publishing its batch")
        survivor = JetStreamBroker(nats_server.url)
        await survivor.connect()
        await outbox.start(survivor)  # the other instance, from now on
        assert await child.exited() == -signal.SIGKILL, child.text
        relay = outbox.relay
        assert relay is not None
        received = await _every_committed_event(outbox, nats_server.url, prefix, len(committed))
    finally:
        await child.kill()
        await outbox.stop()
        await relay.broker.disconnect()
    acked_by_the_dead = {words[1] for words in child.words("ACKED")}
    assert len(acked_by_the_dead) == 7
    assert relay.published >= len(committed) - 7  # the rest, its leases run out, by the survivor
    _assert_once_in_commit_order(received, committed, set(), prefix, keyless="none")


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_postgres_restarted_while_the_relay_runs(
    engine: AsyncEngine, database_url: str, postgres_server: Any, nats_server: NatsServer, prefix: str
) -> None:
    outbox = Outbox(engine)
    await outbox.create_tables()
    child = await Child.start("feed", database_url, nats_server.url, prefix, "41")
    try:
        await child.command("orders 10", "CREATED")
        await child.command("orders 15", "CREATED")
        before = len(child.words("LOG"))
        postgres_server.stop()  # fast shutdown: every connection dropped
        try:
            await child.until(
                lambda: any("database failed" in " ".join(w) for w in child.words("LOG")[before:]),
                "the relay reports the database down",
            )
        finally:
            postgres_server.start()
        await engine.dispose()  # this test's own pooled connections died with the server
        await child.command("orders 10", "CREATED")
        received = await _every_committed_event(outbox, nats_server.url, prefix, len(child.committed()))
        await _quit(child)
    finally:
        await child.kill()
    _assert_once_in_commit_order(received, child.committed(), child.rolled_back(), prefix)
