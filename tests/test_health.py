"""Health probes: liveness, readiness on both brokers, across a server restart and a stalled server, before startup."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from example_app.app import create_app
from jetstream_fastapi import (
    Broker,
    ConsumerRouter,
    InMemoryBroker,
    InvalidArgumentError,
    JetStreamBroker,
    Message,
    check_readiness,
    health_router,
    jetstream_lifespan,
)
from jetstream_fastapi.server import NatsServer
from tests.conftest import FAST_BACKOFF, WAIT, eventually

RESTART_WAIT = 15.0  # a killed server comes back, then the client reconnects (reconnect_time_wait apart)


@contextlib.asynccontextmanager
async def client_of(app: FastAPI, *, lifespan: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of ``app``, with its lifespan running unless ``lifespan=False``."""
    async with contextlib.AsyncExitStack() as stack:
        asgi: Any = app
        if lifespan:
            asgi = (await stack.enter_async_context(LifespanManager(app))).app
        transport = httpx.ASGITransport(app=asgi)
        yield await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://health.test"))


class Gate:
    """A handler that signals each message it starts and holds it until released."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.seen: list[bytes] = []
        self.events: dict[bytes, asyncio.Event] = {}

    def saw(self, body: bytes) -> asyncio.Event:
        return self.events.setdefault(body, asyncio.Event())

    async def handle(self, msg: Message) -> None:
        self.seen.append(msg.body)
        self.started.set()
        await self.release.wait()
        self.saw(msg.body).set()


def app_with(broker: Broker, router: ConsumerRouter | None = None, **health: Any) -> FastAPI:
    routers = (router,) if router is not None else ()
    app = FastAPI(lifespan=jetstream_lifespan(broker, *routers))
    app.include_router(health_router(**health))
    return app


def running(subject: str, queue: str | None, in_flight: int = 0) -> dict[str, Any]:
    return {
        "subject": subject,
        "queue": queue,
        "state": "running",
        "in_flight": in_flight,
        "last_error": None,
        "active": None,
        "paused_until": None,
        "dead_letters_lost": 0,
    }


# -- without a broker ----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_lifespan", [False, True], ids=["no-lifespan", "lifespan-not-started"])
async def test_ready_without_a_started_lifespan_is_a_clear_503(with_lifespan: bool) -> None:
    app = app_with(InMemoryBroker()) if with_lifespan else FastAPI()
    if not with_lifespan:
        app.include_router(health_router())
    async with client_of(app, lifespan=False) as client:
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 503
    body = ready.json()
    assert body["detail"] is not None
    assert "jetstream_lifespan" in body.pop("detail")
    assert body == {
        "ready": False,
        "connected": False,
        "jetstream": False,
        "consumers": [],
        "dead_letters_lost": 0,
        "outbox": None,
    }
    assert ready.headers["cache-control"] == "no-store"


async def test_explicit_broker_is_not_ready_until_connected() -> None:
    broker = InMemoryBroker()
    app = FastAPI()
    app.include_router(health_router(broker=broker))
    async with client_of(app, lifespan=False) as client:
        before = await client.get("/health/ready")
        assert before.status_code == 503
        assert before.json()["connected"] is False
        assert "not connected" in before.json()["detail"]
        await broker.connect()
        after = await client.get("/health/ready")
        assert after.status_code == 200
        assert after.json() == {
            "ready": True,
            "connected": True,
            "jetstream": True,
            "consumers": [],
            "detail": None,
            "dead_letters_lost": 0,
            "outbox": None,
        }
        await broker.disconnect()
        assert (await client.get("/health/ready")).status_code == 503


# -- the in-memory broker ------------------------------------------------------------------------------


async def test_ready_on_the_in_memory_broker() -> None:
    broker = InMemoryBroker(backoff=FAST_BACKOFF)
    router = ConsumerRouter()
    gate = Gate()
    router.handle("orders.created", queue="processor")(gate.handle)
    async with client_of(app_with(broker, router)) as client:
        response = await client.get("/health/ready")
        assert response.status_code == 200
        assert response.json() == {
            "ready": True,
            "connected": True,
            "jetstream": True,
            "consumers": [running("orders.created", "processor")],
            "detail": None,
            "dead_letters_lost": 0,
            "outbox": None,
        }
        await broker.publish("orders.created", b"x")
        await asyncio.wait_for(gate.started.wait(), WAIT)
        assert (await client.get("/health/ready")).json()["consumers"] == [running("orders.created", "processor", 1)]
        gate.release.set()
        await broker.wait_until_idle()
        assert (await client.get("/health/ready")).json()["consumers"] == [running("orders.created", "processor")]
    # After shutdown (the lifespan state is gone with the app's lifespan): the broker is disconnected.
    assert not broker.is_connected


async def test_example_app_has_the_probes() -> None:
    async with client_of(create_app(InMemoryBroker())) as client:
        assert (await client.get("/health/live")).json() == {"status": "ok"}
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        body = ready.json()
        consumers = sorted(body["consumers"], key=lambda consumer: consumer["queue"])
        assert consumers == [running("orders.created", "billing"), running("orders.created", "order-processor")]
        assert body["outbox"] == {"backlog": 0, "oldest_age": 0.0, "failed": 0, "last_error": None}
        assert (await client.get("/healthz")).json() == {"status": "ok", "nats": True}


async def test_custom_prefix_and_paths() -> None:
    app = app_with(InMemoryBroker(), prefix="/probes", live_path="/alive", ready_path="/ok")
    bare = FastAPI(lifespan=jetstream_lifespan(InMemoryBroker()))
    bare.include_router(health_router(prefix="", live_path="/livez", ready_path="/readyz"))
    async with client_of(app) as client, client_of(bare) as bare_client:
        assert (await client.get("/probes/alive")).status_code == 200
        assert (await client.get("/probes/ok")).json()["ready"] is True
        assert (await client.get("/health/live")).status_code == 404
        assert (await bare_client.get("/livez")).status_code == 200
        assert (await bare_client.get("/readyz")).status_code == 200


async def test_openapi_documents_the_503() -> None:
    async with client_of(app_with(InMemoryBroker())) as client:
        schema = (await client.get("/openapi.json")).json()
    ready = schema["paths"]["/health/ready"]["get"]
    assert set(ready["responses"]) >= {"200", "503"}
    assert ready["tags"] == ["health"]
    assert "/health/live" in schema["paths"]
    hidden = FastAPI()
    hidden.include_router(health_router(include_in_schema=False))
    assert "/health/ready" not in hidden.openapi()["paths"]


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": 0},
        {"timeout": -1.0},
        {"live_path": "live"},
        {"ready_path": ""},
        {"prefix": "health"},
        {"prefix": "/h/"},
    ],
)
def test_invalid_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        health_router(**options)


async def test_a_broker_whose_ping_fails() -> None:
    class Failing:
        is_connected = True
        subscriptions = ()

        async def ping(self, timeout: float = 1.0) -> bool:
            raise RuntimeError("boom")

    failing = await check_readiness(Failing())  # type: ignore[arg-type]
    assert (failing.ready, failing.connected, failing.jetstream) == (False, True, False)
    assert failing.detail == "JetStream did not answer within 1s"


async def test_ping_on_both_brokers(brokers: Callable[..., JetStreamBroker]) -> None:
    memory = InMemoryBroker()
    real = brokers()
    for broker in (memory, real):
        assert await broker.ping() is False
        await broker.connect()
        assert await broker.ping(timeout=0.5) is True
        with pytest.raises(InvalidArgumentError):
            await broker.ping(timeout=0)
        await broker.disconnect()
        assert await broker.ping() is False


# -- a real server ------------------------------------------------------------------------------------


async def test_ready_on_a_real_server_lists_running_consumers(
    brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    broker = brokers()
    router = ConsumerRouter()
    durable, ephemeral = Gate(), Gate()
    router.handle(f"{prefix}.work", queue="workers")(durable.handle)
    router.handle(f"{prefix}.events.>")(ephemeral.handle)
    async with client_of(app_with(broker, router)) as client:
        response = await client.get("/health/ready")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["ready"], body["connected"], body["jetstream"], body["detail"]) == (True, True, True, None)
        consumers = sorted(body["consumers"], key=lambda consumer: consumer["subject"])
        assert consumers == [running(f"{prefix}.events.>", None), running(f"{prefix}.work", "workers")]

        await broker.publish(f"{prefix}.work", b"job")
        await asyncio.wait_for(durable.started.wait(), WAIT)
        [busy] = [c for c in (await client.get("/health/ready")).json()["consumers"] if c["queue"] == "workers"]
        assert busy == running(f"{prefix}.work", "workers", in_flight=1)
        durable.release.set()
        await broker.wait_until_idle()
        assert all(c["in_flight"] == 0 for c in (await client.get("/health/ready")).json()["consumers"])


async def test_a_stopping_consumer_is_not_ready(brokers: Callable[..., JetStreamBroker], prefix: str) -> None:
    broker = brokers()
    await broker.connect()
    app = FastAPI()
    app.include_router(health_router(broker=broker))
    gate = Gate()
    subscription = await broker.subscribe(f"{prefix}.work", gate.handle, queue="workers")
    await broker.publish(f"{prefix}.work", b"job")
    await asyncio.wait_for(gate.started.wait(), WAIT)
    async with client_of(app, lifespan=False) as client:
        assert (await client.get("/health/ready")).status_code == 200
        stopping = asyncio.create_task(subscription.unsubscribe())  # waits for the held handler

        async def reports_stopping() -> None:
            response = await client.get("/health/ready")
            assert response.status_code == 503
            body = response.json()
            assert body["consumers"] == [{**running(f"{prefix}.work", "workers", 1), "state": "stopping"}]
            assert (body["connected"], body["jetstream"]) == (True, True)
            assert body["detail"] == f"consumer {prefix}.work (queue workers) is stopping"

        await eventually(reports_stopping)
        gate.release.set()
        await asyncio.wait_for(stopping, WAIT)
        after = await client.get("/health/ready")
        assert (after.status_code, after.json()["consumers"]) == (200, [])


async def test_readiness_follows_a_server_restart(
    fresh_server: NatsServer, brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    broker = brokers(fresh_server.url, reconnect_time_wait=0.1)
    router = ConsumerRouter()
    gate = Gate()
    gate.release.set()
    subject = f"{prefix}.work"
    router.handle(subject, queue="workers")(gate.handle)
    async with client_of(app_with(broker, router)) as client:
        assert (await client.get("/health/ready")).status_code == 200

        await asyncio.to_thread(fresh_server.kill)

        async def not_ready() -> None:
            response = await client.get("/health/ready")
            assert response.status_code == 503
            body = response.json()
            assert (body["ready"], body["connected"], body["jetstream"]) == (False, False, False)
            assert [c["subject"] for c in body["consumers"]] == [subject]
            assert "not connected" in body["detail"]

        await eventually(not_ready)
        assert (await client.get("/health/live")).status_code == 200  # liveness never asks NATS

        await asyncio.to_thread(fresh_server.start)

        async def ready_again() -> None:
            response = await client.get("/health/ready")
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["ready"], body["connected"], body["jetstream"]) == (True, True, True)
            assert [(c["subject"], c["queue"], c["state"]) for c in body["consumers"]] == [
                (subject, "workers", "running")
            ]

        await eventually(ready_again, timeout=RESTART_WAIT)
        # Ready means it: the consumer takes new work after the restart.
        await broker.publish(subject, b"after-restart")
        await asyncio.wait_for(gate.saw(b"after-restart").wait(), WAIT)


async def test_a_stalled_server_is_not_ready(
    fresh_server: NatsServer, brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    # SIGSTOP keeps the TCP connection open: only the JetStream request can notice that nothing answers.
    broker = brokers(fresh_server.url)
    router = ConsumerRouter()
    router.handle(f"{prefix}.work", queue="workers")(Gate().handle)
    async with client_of(app_with(broker, router, timeout=0.2)) as client:
        assert (await client.get("/health/ready")).status_code == 200
        fresh_server.pause()  # SIGSTOP takes effect asynchronously: poll until the server stops answering

        async def stalled() -> None:
            response = await client.get("/health/ready")
            assert response.status_code == 503
            body = response.json()
            assert (body["ready"], body["connected"], body["jetstream"]) == (False, True, False)
            assert body["detail"] == "JetStream did not answer within 0.2s"

        try:
            await eventually(stalled)
        finally:
            fresh_server.resume()
        await eventually(lambda: _expect_status(client, 200))


async def _expect_status(client: httpx.AsyncClient, status: int) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == status, response.text


# -- the server is asked at most once a second --------------------------------------------------------------


class Counting(InMemoryBroker):
    """An in-memory broker that counts the server requests a readiness check makes."""

    def __init__(self) -> None:
        super().__init__()
        self.pings = 0
        self.state_reads = 0

    async def ping(self, timeout: float = 1.0) -> bool:
        self.pings += 1
        return await super().ping(timeout)

    async def consumer_states(self) -> Any:
        self.state_reads += 1
        return await super().consumer_states()


async def test_readiness_asks_the_server_once_per_cache_period() -> None:
    assert inspect.signature(health_router).parameters["cache_seconds"].default == 1.0
    broker = Counting()
    router = ConsumerRouter()
    router.handle("orders.created", queue="processor")(Gate().handle)
    app = FastAPI(lifespan=jetstream_lifespan(broker, router))
    app.include_router(health_router(cache_seconds=3600))  # no probe here outlives it: no timing asserted
    app.include_router(health_router(prefix="/uncached", cache_seconds=0))
    async with client_of(app) as client:
        probes = await asyncio.gather(*(client.get("/health/ready") for _ in range(20)))
        probes += [await client.get("/health/ready") for _ in range(5)]
        assert {probe.status_code for probe in probes} == {200}
        assert (broker.pings, broker.state_reads) == (1, 1)  # one of each for 25 probes
        for _ in range(3):
            assert (await client.get("/uncached/ready")).status_code == 200
        assert (broker.pings, broker.state_reads) == (4, 4)
        await broker.disconnect()  # what the broker knows without asking is never cached
        assert (await client.get("/health/ready")).json()["connected"] is False
