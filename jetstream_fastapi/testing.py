"""Testing kit: fixtures for a real embedded server and for the in-memory broker, as a pytest plugin.

Install the ``testing`` extra (pytest, pytest-asyncio, httpx, asgi-lifespan, nats-server) and enable the
plugin in your ``conftest.py``::

    pytest_plugins = ["jetstream_fastapi.testing"]

The async fixtures are pytest-asyncio fixtures, so they work in its default *strict* mode (mark async tests
with ``@pytest.mark.asyncio``) as well as with ``asyncio_mode = auto``; they run in the event loop that
``asyncio_default_fixture_loop_scope`` chooses, as your own fixtures do.

Then a test that takes the ``broker`` fixture runs twice, on an :class:`InMemoryBroker` (fast, no server)
and on a :class:`JetStreamBroker` connected to a real ``nats-server`` started for the session (needs the
``server`` extra). ``pytest --broker=memory`` or ``--broker=jetstream`` runs one of them only. The test
code does not change::

    async def test_order_is_processed(broker: Broker) -> None:
        app = create_app(broker)
        async with LifespanManager(app) as manager, AsyncClient(...) as client:
            await client.post("/orders", json={...})
            await wait_until_handled(broker)
            ...

Fixtures: ``nats_server`` (one server for the session), ``memory_broker`` (on the clock of ``broker_clock``:
real time unless a test module overrides it with a :class:`~jetstream_fastapi.ManualClock`),
``jetstream_broker`` (on a server of the test's own: each test starts from nothing), ``broker``
(parametrized over both). The brokers are *not*
connected, so an app's lifespan can connect them; call ``await broker.connect()`` to use one directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

try:
    import pytest_asyncio
except ImportError as error:
    raise ImportError(
        "jetstream_fastapi.testing needs pytest-asyncio: pip install 'jetstream-fastapi[testing]'"
    ) from error

from .backends.memory.broker import InMemoryBroker
from .clock import Clock, ManualClock
from .driver import Broker
from .errors import InvalidArgumentError
from .server import NatsServer

__all__ = ["broker_clock", "jetstream_broker", "memory_broker", "nats_server", "wait_until_handled"]

KINDS = ("memory", "jetstream")


async def wait_until_handled(
    broker: Broker, timeout: float = 10.0, *, advance: float | None = None, outbox: Any = None
) -> None:
    """Return once every message published to ``broker`` that is due has been handled to its end (acked,
    or dead-lettered after its retries), without sleeping; ``TimeoutError`` after ``timeout`` seconds.

    With ``outbox`` (a running :class:`jetstream_fastapi.outbox.Outbox`, the app's: ``lifespan_of(app).outbox``),
    the rows committed so far are published by its relay first, then handled.

    A message published with ``delay=``/``at=`` is due at its time, and not waited for before: on a real
    server (or a real clock) the test waits for its time itself. On an :class:`InMemoryBroker` with a
    :class:`~jetstream_fastapi.ManualClock` (the ``broker_clock`` fixture), ``advance=seconds`` moves the
    clock that far first, in order through every timer due on the way (the delayed messages among them),
    and then waits until what fell due has been handled. ``advance`` on another broker or clock raises
    :class:`~jetstream_fastapi.InvalidArgumentError`: it cannot make real time pass.
    """
    if advance is not None:
        clock = broker.clock if isinstance(broker, InMemoryBroker) else None
        if not isinstance(clock, ManualClock):
            raise InvalidArgumentError(
                "advance= moves a ManualClock: give the InMemoryBroker clock=ManualClock() (the broker_clock "
                f"fixture), not {clock or broker!r}"
            )
        await broker.wait_until_idle(timeout)  # what is due now first, so that advancing starts from it
        await clock.advance(advance)
    if outbox is not None:
        await asyncio.wait_for(_drained(outbox), timeout)
    await broker.wait_until_idle(timeout)


async def _drained(outbox: Any) -> None:
    """Return once ``outbox``'s table holds no row waiting to be published (failed rows wait for an operator,
    not for the relay). The relay works in its own task on the database: its table is read again after each
    wake-up, as tests read a server's state."""
    while (await outbox.stats()).backlog:
        relay = outbox.relay
        if relay is None:
            raise InvalidArgumentError("the outbox's relay is not running: start the app's lifespan first")
        relay.wake()
        await asyncio.sleep(0.01)


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--broker``: which brokers the ``broker`` fixture runs on."""
    parser.addoption(
        "--broker",
        choices=("both", *KINDS),
        default="both",
        help="run tests that use the `broker` fixture on the in-memory broker, a real server, or both",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize the ``broker`` fixture over the chosen kinds."""
    if "broker" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--broker")
        metafunc.parametrize("broker", KINDS if chosen == "both" else (chosen,), indirect=True)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A real ``nats-server -js`` on a free loopback port with a temporary store, for the whole session."""
    with NatsServer() as server:
        yield server


@pytest.fixture
def broker_clock() -> Clock | None:
    """The clock of the ``memory_broker`` fixture: ``None``, real time. Override it to drive the broker's
    timers (nak delays, ack wait, delayed messages) from a test::

        @pytest.fixture
        def broker_clock() -> ManualClock:
            return ManualClock()
    """
    return None


@pytest_asyncio.fixture
async def memory_broker(broker_clock: Clock | None) -> AsyncIterator[InMemoryBroker]:
    """A fresh, unconnected :class:`InMemoryBroker` on ``broker_clock``; disconnected after the test."""
    broker = InMemoryBroker(clock=broker_clock)
    yield broker
    await broker.disconnect()


@pytest_asyncio.fixture
async def jetstream_broker() -> AsyncIterator[Any]:
    """An unconnected :class:`JetStreamBroker` on a ``nats-server`` of this test's own (started in about
    50 ms, with a temporary store), so that each test starts from nothing, whatever ran before it.

    (Deleting every stream between tests on one server is not enough: nats-server 2.15 can bring a message
    of a file stream deleted a moment ago back into a new stream of the same name.)"""
    from .backends.jetstream.broker import JetStreamBroker

    with NatsServer() as server:
        broker = JetStreamBroker(server.url, fetch_wait=1.0)
        yield broker
        await broker.disconnect()


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Broker:
    """An unconnected broker of each kind chosen with ``--broker`` (both by default)."""
    fixture = "memory_broker" if request.param == "memory" else "jetstream_broker"
    chosen: Broker = request.getfixturevalue(fixture)
    return chosen
