"""Shared fixtures: one real nats-server per test session, and broker factories that clean up."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.manager import JetStreamManager

from jetstream_fastapi import Backoff, InMemoryBroker, JetStreamBroker
from jetstream_fastapi.server import NatsServer

# The project's own testing kit provides `nats_server` (one real server per session), `memory_broker`,
# `jetstream_broker` and the `broker` fixture parametrized over both.
pytest_plugins = ["jetstream_fastapi.testing"]

# Fast redeliveries keep retry tests short; the schedule itself is checked in unit tests.
FAST_BACKOFF = Backoff(initial=0.02, maximum=0.1, jitter=0.0)
WAIT = 5.0  # generous bound on anything that should take milliseconds


async def eventually(check: Callable[[], Any], timeout: float = WAIT) -> None:
    """Poll the *server's* state (which signals nothing) until ``check`` passes; re-raise its last failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.02)


@pytest.fixture
def fresh_server() -> Iterator[NatsServer]:
    """A nats-server of this test's own, for tests that stop, kill or pause it."""
    with NatsServer() as server:
        yield server


BrokerFactory = Callable[..., Any]


@pytest.fixture(params=["memory", "jetstream"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[BrokerFactory]:
    """A factory of connected brokers of one kind (parametrized over both), disconnected at teardown.

    On the real server each test gets its own subject prefix (``request.node`` based) via ``prefix``.
    """
    brokers: list[Any] = []
    kind = request.param

    async def factory(**options: Any) -> Any:
        options.setdefault("backoff", FAST_BACKOFF)
        if kind == "memory":
            broker: Any = InMemoryBroker(**options)
        else:
            server: NatsServer = request.getfixturevalue("nats_server")
            options.setdefault("fetch_wait", 1.0)
            broker = JetStreamBroker(server.url, **options)
        await broker.connect()
        brokers.append(broker)
        return broker

    factory.kind = kind  # type: ignore[attr-defined]
    yield factory
    for broker in brokers:
        await broker.disconnect()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A subject token unique to this test, so tests sharing a server never see each other's messages."""
    import re
    import uuid

    name = re.sub(r"[^a-zA-Z0-9]", "", request.node.name)[:24].lower()
    return f"t{name}{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def admin_nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


@pytest.fixture
def admin(admin_nc: NATS) -> JetStreamManager:
    """A JetStreamManager on a separate connection: the test's view of the server."""
    return admin_nc.jsm()


@pytest.fixture
async def brokers(nats_server: NatsServer) -> AsyncIterator[Callable[..., JetStreamBroker]]:
    """Makes (unconnected) JetStream brokers, by default on the shared server; all are disconnected at teardown."""
    made: list[JetStreamBroker] = []

    def make(url: str | None = None, **options: Any) -> JetStreamBroker:
        options.setdefault("backoff", FAST_BACKOFF)
        options.setdefault("fetch_wait", 1.0)
        broker = JetStreamBroker(url or nats_server.url, **options)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        with contextlib.suppress(Exception):
            await broker.disconnect()


# -- databases for the outbox and the inbox ------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL 18 for the session (tests/postgres.py), on a free loopback port."""
    from tests.postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[str]:
    """The SQLAlchemy URL of an empty database of this test's own: a SQLite file, or a new database on the
    session's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
        return
    import asyncpg

    server = request.getfixturevalue("postgres_server")
    name = f"t{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/postgres")
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")  # template0: copied 3x faster
    finally:
        await admin.close()
    yield server.url(name)
