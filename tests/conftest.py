"""Shared fixtures: one real nats-server per test session, and broker factories that clean up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from jetstream_fastapi import Backoff, InMemoryBroker, JetStreamBroker
from jetstream_fastapi.server import NatsServer

# Fast redeliveries keep retry tests short; the schedule itself is checked in unit tests.
FAST_BACKOFF = Backoff(initial=0.02, maximum=0.1, jitter=0.0)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a free loopback port, shared by the session."""
    with NatsServer() as server:
        yield server


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
