"""The transactional outbox on both brokers and both databases (SQLite file, real PostgreSQL).

Each test waits on what a consumer receives (an event per message), never on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from nats.js.api import StreamConfig
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from jetstream_fastapi import InMemoryBroker, Message
from jetstream_fastapi.outbox import Outbox
from jetstream_fastapi.outbox.claims import RelayLease, Row
from jetstream_fastapi.outbox.relay import Relay
from tests.conftest import WAIT, BrokerFactory, eventually

orders = Table("orders", MetaData(), Column("id", Integer, primary_key=True), Column("customer", String(50)))


class Received:
    """What a consumer of the outbox's subjects got, in stream order, awaitable."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Condition()

    async def handler(self, message: Message) -> None:
        self.messages.append(message)
        async with self._changed:
            self._changed.notify_all()

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                raise AssertionError(f"{what}: got {[m.body for m in self.messages]}") from None

    def bodies(self) -> list[str]:
        ordered = sorted(self.messages, key=lambda m: m.delivery.sequence if m.delivery else 0)
        return [m.body.decode() for m in ordered]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    made = create_async_engine(database_url)
    async with made.begin() as connection:
        await connection.run_sync(orders.metadata.create_all)
    yield made
    await made.dispose()


async def _outbox(engine: AsyncEngine, **options: Any) -> Outbox:
    options.setdefault("poll_interval", 0.5)
    options.setdefault("lease_ttl", max(2.0, 2 * options["poll_interval"]))
    outbox = Outbox(engine, **options)
    await outbox.create_tables()
    return outbox


async def _consume(broker: Any, subject: str) -> Received:
    received = Received()
    await broker.subscribe(subject, received.handler, queue="reader", concurrency=1)
    return received


@contextlib.asynccontextmanager
async def relaying(broker: Any, engine: AsyncEngine, prefix: str, **options: Any) -> AsyncIterator[Relaying]:
    """An outbox with its relay running on ``broker``, and a consumer of ``<prefix>.>``."""
    outbox = await _outbox(engine, **options)
    received = await _consume(broker, f"{prefix}.>")
    await outbox.start(broker)
    try:
        yield Relaying(outbox, received, async_sessionmaker(engine))
    finally:
        await outbox.stop()


@dataclasses.dataclass
class Relaying:
    outbox: Outbox
    received: Received
    sessions: async_sessionmaker[AsyncSession]


async def test_a_committed_message_is_published_once_and_its_row_deleted(
    make_broker: BrokerFactory, engine: AsyncEngine, prefix: str
) -> None:
    broker = await make_broker()
    async with relaying(broker, engine, prefix) as r:
        async with r.sessions() as session, session.begin():
            await session.execute(insert(orders).values(id=1, customer="ada"))
            msg_id = await r.outbox.publish(session, f"{prefix}.created", b"order 1", key="1", headers={"X-A": "1"})
        await r.received.until(lambda: len(r.received.messages) == 1, "the order's event")
        [message] = r.received.messages
        assert (message.body, message.msg_id, message.headers["X-A"]) == (b"order 1", msg_id, "1")
        await _until_empty(r.outbox)
    assert r.outbox.relay is None


async def _until_empty(outbox: Outbox) -> None:
    async def empty() -> None:
        assert (await outbox.stats()).backlog == 0

    await eventually(empty)  # the table signals nothing: poll its state


async def test_a_rolled_back_transaction_publishes_nothing(
    make_broker: BrokerFactory, engine: AsyncEngine, prefix: str
) -> None:
    broker = await make_broker()
    async with relaying(broker, engine, prefix) as r:
        async with r.sessions() as session, session.begin():
            await session.execute(insert(orders).values(id=1, customer="ada"))
            await r.outbox.publish(session, f"{prefix}.created", b"ghost", key="1")
            await session.rollback()
        async with r.sessions() as session, session.begin():
            await r.outbox.publish(session, f"{prefix}.created", b"real", key="1")
        await r.received.until(lambda: len(r.received.messages) >= 1, "the committed event")
        await broker.wait_until_idle(WAIT)
    assert r.received.bodies() == ["real"]
    async with engine.connect() as connection:
        assert (await connection.execute(select(orders))).all() == []


async def test_messages_of_one_key_are_published_in_commit_order_keys_in_parallel(
    make_broker: BrokerFactory, engine: AsyncEngine, prefix: str
) -> None:
    broker = await make_broker()
    keys, per_key = [f"k{n}" for n in range(5)], 8
    committed: dict[str, list[str]] = {key: [] for key in keys}
    async with relaying(broker, engine, prefix, batch_size=7, concurrency=4) as r:

        async def writer(key: str) -> None:
            for n in range(per_key):
                async with r.sessions() as session, session.begin():
                    await r.outbox.publish(session, f"{prefix}.{key}", f"{key}-{n}", key=key)
                committed[key].append(f"{key}-{n}")  # after the commit: the commit order of this key

        await asyncio.gather(*(writer(key) for key in keys))
        total = len(keys) * per_key
        await r.received.until(lambda: len(r.received.messages) >= total, "every event")
        await broker.wait_until_idle(WAIT)
    bodies = r.received.bodies()
    assert len(bodies) == len(set(bodies)) == total
    for key in keys:
        assert [body for body in bodies if body.startswith(f"{key}-")] == committed[key]


async def test_a_message_the_server_refuses_for_good_is_dead_lettered_with_its_reason(
    engine: AsyncEngine, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    declared = StreamConfig(name="ORDERS", subjects=[f"{prefix}.orders.>"])
    async with InMemoryBroker(auto_provision=False, streams=[declared]) as broker:
        async with relaying(broker, engine, f"{prefix}.orders") as r:
            async with r.sessions() as session, session.begin():
                await r.outbox.publish(session, f"{prefix}.nowhere", b"lost?", key="a")
                await r.outbox.publish(session, f"{prefix}.orders.created", b"after", key="a")
            await r.received.until(lambda: len(r.received.messages) == 1, "the next row of the key")
        [letter] = await broker.list_dead_letters(stream="OUTBOX")
    assert (letter.subject, letter.body, letter.error_type) == (f"{prefix}.nowhere", b"lost?", "NoStreamError")
    assert "dead-lettered" in caplog.text


async def test_a_publish_retried_after_a_lost_puback_is_stored_once(engine: AsyncEngine, prefix: str) -> None:
    async with InMemoryBroker() as broker, relaying(broker, engine, prefix) as r:
        broker.faults.fail_publishes(2, stored=True)  # stored, but the PubAck is lost: the relay retries
        async with r.sessions() as session, session.begin():
            await r.outbox.publish(session, f"{prefix}.created", b"once", key="a")
        await r.received.until(lambda: len(r.received.messages) == 1, "the event")
        await _until_empty(r.outbox)
        await broker.wait_until_idle(WAIT)
    assert r.received.bodies() == ["once"]


async def test_rows_written_while_nats_is_down_are_published_in_order_once_it_answers(
    engine: AsyncEngine, prefix: str
) -> None:
    async with InMemoryBroker() as broker, relaying(broker, engine, prefix) as r:
        broker.faults.drop_connection()
        for n in range(10):
            async with r.sessions() as session, session.begin():
                await r.outbox.publish(session, f"{prefix}.created", str(n), key="a")
        assert (await r.outbox.stats()).backlog == 10
        broker.faults.restore_connection()
        await r.received.until(lambda: len(r.received.messages) == 10, "every event")
    assert r.received.bodies() == [str(n) for n in range(10)]


async def test_a_short_duplicate_window_is_reported_with_what_to_change(
    engine: AsyncEngine, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = InMemoryBroker(duplicate_window=1.0)
    await broker.connect()
    outbox = Outbox(engine, lease_ttl=10.0, poll_interval=1.0, subjects=[f"{prefix}.created"])
    await outbox.create_tables()
    with caplog.at_level(logging.WARNING, "jetstream_fastapi"):
        await outbox.start(broker)
        await outbox.stop()
    await broker.disconnect()
    assert "remembers msg ids for 1s, less than the relay's retry horizon of 11s" in caplog.text
    assert "Raise the stream's duplicate_window to at least 11s" in caplog.text


async def test_publish_checks_its_arguments_before_writing(engine: AsyncEngine) -> None:
    outbox = await _outbox(engine)
    async with async_sessionmaker(engine)() as session, session.begin():
        with pytest.raises(ValueError, match="subject"):
            await outbox.publish(session, "bad subject", b"x")
        with pytest.raises(ValueError, match="key"):
            await outbox.publish(session, "ok", b"x", key="")
        with pytest.raises(ValueError, match="msg_id"):
            await outbox.publish(session, "ok", b"x", msg_id="a\nb")
    assert (await outbox.stats()).backlog == 0


async def test_a_core_connection_transaction_works_too(
    make_broker: BrokerFactory, engine: AsyncEngine, prefix: str
) -> None:
    broker = await make_broker()
    async with relaying(broker, engine, prefix) as r:
        async with engine.begin() as connection:
            await r.outbox.publish(connection, f"{prefix}.created", "core", key="a")
        r.outbox.notify()  # no session event on a Core connection (PostgreSQL's NOTIFY wakes it anyway)
        await r.received.until(lambda: len(r.received.messages) == 1, "the event")


def test_the_base_install_does_not_import_sqlalchemy() -> None:
    script = (
        "import sys, jetstream_fastapi\n"
        "from jetstream_fastapi import jetstream_lifespan, ConsumerRouter, InMemoryBroker, health_router\n"
        "from jetstream_fastapi.inbox import KeyValueInbox, message_identity\n"
        "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


async def test_the_session_event_wakes_the_relay_without_polling(engine: AsyncEngine, prefix: str) -> None:
    # A poll would come far too late for the waits below (WAIT seconds).
    async with InMemoryBroker() as broker, relaying(broker, engine, prefix, poll_interval=30.0) as r:
        for n in range(1, 4):
            async with AsyncSession(engine) as session, session.begin():
                await r.outbox.publish(session, f"{prefix}.created", str(n))
            await r.received.until(lambda n=n: len(r.received.messages) == n, "the event, woken by the commit")


async def test_postgres_notify_wakes_a_relay_of_another_instance(postgres_server: Any, prefix: str) -> None:
    import asyncpg

    name = f"n{prefix[-10:]}"
    admin = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres")
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    relay_engine, writer_engine = (create_async_engine(postgres_server.url(name)) for _ in range(2))
    writer_side = Outbox(writer_engine)  # another instance: no relay of its own running
    try:
        async with InMemoryBroker() as broker, relaying(broker, relay_engine, prefix, poll_interval=30.0) as r:
            async with AsyncSession(writer_engine) as session, session.begin():
                await writer_side.publish(session, f"{prefix}.created", "from afar")
            await r.received.until(lambda: len(r.received.messages) == 1, "the event, woken by NOTIFY")
    finally:
        await relay_engine.dispose()
        await writer_engine.dispose()


async def test_two_relays_on_postgres_share_the_rows_each_key_in_order(postgres_server: Any, prefix: str) -> None:
    import asyncpg

    name = f"r{prefix[-10:]}"
    admin = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres")
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    first_engine, second_engine = (create_async_engine(postgres_server.url(name)) for _ in range(2))
    keys, per_key = [f"k{n}" for n in range(6)], 25
    first = await _outbox(first_engine, batch_size=10, concurrency=3)
    second = Outbox(second_engine, batch_size=10, concurrency=3, poll_interval=0.5, lease_ttl=2.0)
    async with AsyncSession(first_engine) as session, session.begin():
        for n in range(per_key):
            for key in keys:
                await first.publish(session, f"{prefix}.{key}", f"{key}-{n}", key=key)
    try:
        async with InMemoryBroker() as broker:
            received = await _consume(broker, f"{prefix}.>")
            await first.start(broker)
            await second.start(broker)
            try:
                await received.until(lambda: len(received.messages) >= len(keys) * per_key, "every event")
                await broker.wait_until_idle(WAIT)
            finally:
                await first.stop()
                await second.stop()
    finally:
        await first_engine.dispose()
        await second_engine.dispose()
    bodies = received.bodies()
    assert len(bodies) == len(set(bodies)) == len(keys) * per_key
    for key in keys:
        assert [body for body in bodies if body.startswith(f"{key}-")] == [f"{key}-{n}" for n in range(per_key)]


async def test_jetstream_lifespan_runs_the_relay_around_the_handlers(engine: AsyncEngine, prefix: str) -> None:
    from asgi_lifespan import LifespanManager
    from fastapi import FastAPI

    from jetstream_fastapi import ConsumerRouter, jetstream_lifespan

    broker, router, received = InMemoryBroker(), ConsumerRouter(), Received()
    outbox = await _outbox(engine)
    router.handle(f"{prefix}.>", queue="reader")(received.handler)
    app = FastAPI(lifespan=jetstream_lifespan(broker, router, outbox=outbox))
    async with LifespanManager(app):
        assert outbox.relay is not None
        async with AsyncSession(engine) as session, session.begin():
            await outbox.publish(session, f"{prefix}.created", "via the lifespan")
        await received.until(lambda: len(received.messages) == 1, "the event")
    assert outbox.relay is None


async def test_readiness_reports_the_outbox_backlog(engine: AsyncEngine, prefix: str) -> None:
    import httpx
    from asgi_lifespan import LifespanManager
    from fastapi import FastAPI

    from jetstream_fastapi import health_router, jetstream_lifespan

    broker = InMemoryBroker()
    outbox = await _outbox(engine)
    app = FastAPI(lifespan=jetstream_lifespan(broker, outbox=outbox))
    app.include_router(health_router())
    async with LifespanManager(app) as manager:
        broker.faults.drop_connection()  # the row waits
        async with AsyncSession(engine) as session, session.begin():
            await outbox.publish(session, f"{prefix}.created", "waiting")
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            body = (await client.get("/health/ready")).json()
        broker.faults.restore_connection()
    assert body["outbox"]["backlog"] == 1
    assert body["outbox"]["failed"] == 0
    assert body["outbox"]["oldest_age"] >= 0


async def test_nats_down_is_reported_once_not_once_per_row(
    engine: AsyncEngine, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with InMemoryBroker(publish_timeout=0.1) as broker, relaying(broker, engine, prefix) as r:
        broker.faults.drop_connection()
        async with r.sessions() as session, session.begin():
            for n in range(10):
                await r.outbox.publish(session, f"{prefix}.k{n}", str(n), key=f"k{n}")
        relay = r.outbox.relay
        assert relay is not None

        async def reported() -> None:
            assert relay.last_error is not None

        await eventually(reported)  # the relay's own state: polled
        broker.faults.restore_connection()
        await r.received.until(lambda: len(r.received.messages) == 10, "every event")
    reports = [record for record in caplog.records if "NATS" in record.getMessage()]
    assert len(reports) == 1, [record.getMessage() for record in reports]


# -- the SQLite relay lease: renewed at half its TTL, never used after it lapsed ---------------------------


class Clock:
    """A wall clock the test moves by hand (the lease compares ``until`` with it)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sqlite_engine(tmp_path: Any) -> AsyncIterator[AsyncEngine]:
    made = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'lease.db'}")
    yield made
    await made.dispose()


def _lease_writes(engine: AsyncEngine, table: str) -> list[str]:
    """The INSERT and UPDATE statements sent on ``table`` from now on (each one a write transaction,
    an fsync on SQLite)."""
    writes: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        words = statement.split()
        if words[0].upper() in ("UPDATE", "INSERT") and table in statement:
            writes.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    return writes


def _lease(outbox: Outbox, owner: str, clock: Clock) -> RelayLease:
    tables = outbox.tables
    lease = RelayLease(outbox.engine, tables.messages, tables.leases, owner, outbox.lease_ttl)
    lease.clock = clock
    return lease


async def test_the_sqlite_relay_lease_is_renewed_at_half_its_ttl_not_every_round(sqlite_engine: AsyncEngine) -> None:
    outbox = await _outbox(sqlite_engine, poll_interval=0.5, lease_ttl=10.0)
    clock = Clock()
    lease = _lease(outbox, "a", clock)
    writes = _lease_writes(sqlite_engine, outbox.tables.leases.name)
    rounds = 40
    for _ in range(rounds):  # 20 s of idle rounds, one per poll_interval
        assert await lease.claim(10) == []
        assert lease.holds()
        clock.now += outbox.poll_interval
    # One take, then a renewal once half the TTL (5 s) is left, at 5, 10 and 15 s: 4, not one per round (40).
    assert len(writes) == 4, writes


async def test_a_standby_sqlite_relay_takes_over_only_after_the_lease_ran_out(sqlite_engine: AsyncEngine) -> None:
    outbox = await _outbox(sqlite_engine, poll_interval=0.5, lease_ttl=10.0)
    clock = Clock()
    first, second = _lease(outbox, "first", clock), _lease(outbox, "second", clock)
    async with sqlite_engine.begin() as connection:
        await outbox.publish(connection, "orders.created", b"1", key="1")
    assert [row.body for row in await first.claim(10)] == [b"1"]
    writes = _lease_writes(sqlite_engine, outbox.tables.leases.name)
    for _ in range(5):  # the standby reads, and writes nothing, while the lease holds
        assert await second.claim(10) == []
        clock.now += 1.0
    assert writes == []
    clock.now += 6.0  # the first relay stalled: it did not renew, its lease ran out
    assert not first.holds()
    assert [row.body for row in await second.claim(10)] == [b"1"]
    assert await first.claim(10) == []
    assert not first.holds()
    await second.give_up()  # a relay that stops hands over at once
    assert [row.body for row in await first.claim(10)] == [b"1"]


class _RecordingBroker:
    """Takes every publish (the lease tests need no NATS)."""

    def __init__(self) -> None:
        self.published: list[str] = []

    async def publish(self, subject: str, message: Message, *, msg_id: str) -> Any:
        self.published.append(msg_id)
        return dataclasses.make_dataclass("Ack", ["stream"])("ORDERS")

    async def duplicate_window(self, subject: str) -> float:
        return 120.0


async def test_a_relay_whose_lease_lapsed_after_its_claim_publishes_nothing(sqlite_engine: AsyncEngine) -> None:
    outbox = await _outbox(sqlite_engine, poll_interval=0.5, lease_ttl=10.0)
    async with sqlite_engine.begin() as connection:
        for n in range(3):
            await outbox.publish(connection, "orders.created", str(n), key="1")
    broker = _RecordingBroker()
    relay = Relay(outbox, broker)  # type: ignore[arg-type]  # only publish and duplicate_window are used
    clock = Clock()
    claims = relay.claims
    assert isinstance(claims, RelayLease)
    claims.clock = clock
    claim = claims.claim

    async def claim_then_stall(limit: int) -> list[Row]:
        rows = await claim(limit)
        clock.now += outbox.lease_ttl  # the relay stalled between its claim and its publishes
        return rows

    claims.claim = claim_then_stall  # type: ignore[method-assign]
    await relay.round()
    assert broker.published == []
    assert (await outbox.stats()).backlog == 3  # still waiting, for whoever holds the lease now
    claims.claim = claim  # type: ignore[method-assign]
    await relay.round()
    assert len(broker.published) == 3


async def test_two_sqlite_relays_one_publishes_the_other_takes_over_when_it_stops(
    make_broker: BrokerFactory, sqlite_engine: AsyncEngine, prefix: str
) -> None:
    broker = await make_broker()
    async with relaying(broker, sqlite_engine, prefix) as r:
        first = r.outbox.relay
        assert first is not None

        async def holding() -> None:
            assert first.claims.holds()

        await eventually(holding)  # the relay's own state: polled
        standby = Outbox(sqlite_engine, poll_interval=0.5, lease_ttl=2.0)
        await standby.start(broker)
        second = standby.relay
        assert second is not None
        try:
            for batch in range(2):
                async with r.sessions() as session, session.begin():
                    for n in range(5):
                        await r.outbox.publish(session, f"{prefix}.created", f"{batch}.{n}", key="a")
                expected = 5 * (batch + 1)
                await r.received.until(lambda n=expected: len(r.received.messages) == n, "the key's events")
                await _until_empty(r.outbox)
                await r.outbox.stop()  # the first relay hands the lease over; the standby publishes the second
            assert r.received.bodies() == [f"{batch}.{n}" for batch in range(2) for n in range(5)]
            assert (first.published, second.published) == (5, 5)
        finally:
            await standby.stop()
