"""FastAPI integration: lifespan, Depends(get_broker), ConsumerRouter, TestClient and httpx ASGI transport."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from jetstream_fastapi import (
    Broker,
    ConnectError,
    ConsumerRouter,
    InMemoryBroker,
    InvalidArgumentError,
    InvalidHandlerError,
    InvalidQueueError,
    InvalidSubjectError,
    JetStreamBroker,
    Message,
    get_broker,
    jetstream_lifespan,
)
from jetstream_fastapi.server import NatsServer


class Order(BaseModel):
    id: str
    quantity: int


def build_app(broker: Broker, *routers: ConsumerRouter, **kwargs: Any) -> FastAPI:
    app = FastAPI(lifespan=jetstream_lifespan(broker, *routers, **kwargs))

    @app.post("/orders", status_code=202)
    async def create(order: Order, broker: Broker = Depends(get_broker)) -> dict[str, object]:
        ack = await broker.publish("orders.created", Message(body=order.model_dump_json().encode()))
        return {"stream": ack.stream, "seq": ack.seq}

    return app


def test_router_returns_the_function_unchanged() -> None:
    router = ConsumerRouter()

    async def process(msg: Message) -> None:
        return None

    assert router.handle("orders.created", queue="p")(process) is process
    [spec] = list(router)
    assert (spec.subject, spec.queue, spec.handler) == ("orders.created", "p", process)


def test_registration_mistakes_raise_at_import_time() -> None:
    router = ConsumerRouter()

    def sync_handler(msg: Message) -> None:
        return None

    with pytest.raises(InvalidHandlerError, match="async"):
        router.handle("orders.created")(sync_handler)  # type: ignore[type-var]
    with pytest.raises(InvalidQueueError):
        router.handle("orders.created", queue="order.processor")
    with pytest.raises(InvalidSubjectError):
        router.handle("orders created")
    with pytest.raises(InvalidArgumentError, match=r"handle\(\) got an unexpected .* \(did you mean batch_size\?\)"):
        router.handle("orders.created", batchsize=3)  # type: ignore[call-arg]

    @router.handle("orders.created", queue="p")
    async def first(msg: Message) -> None:
        return None

    with pytest.raises(InvalidArgumentError, match="already handled by"):

        @router.handle("orders.created", queue="p")
        async def second(msg: Message) -> None:
            return None


def test_include_router_composes_and_detects_clashes() -> None:
    orders, billing, app_router = ConsumerRouter(), ConsumerRouter(concurrency=2), ConsumerRouter()

    @orders.handle("orders.created", queue="p")
    async def process(msg: Message) -> None:
        return None

    @billing.handle("orders.created", queue="billing", max_deliver=3)
    async def bill(msg: Message) -> None:
        return None

    app_router.include_router(orders)
    app_router.include_router(billing)
    assert len(app_router) == 2
    assert {s.queue: dict(s.options) for s in app_router} == {
        "p": {},
        "billing": {"concurrency": 2, "max_deliver": 3},
    }
    with pytest.raises(InvalidArgumentError, match="already handled"):
        app_router.include_router(orders)


def test_lifespan_with_test_client_publishes_and_consumes() -> None:
    broker = InMemoryBroker()
    router = ConsumerRouter()
    seen: list[bytes] = []

    @router.handle("orders.created", queue="order-processor")
    async def process(msg: Message) -> None:
        seen.append(msg.body)

    with TestClient(build_app(broker, router)) as client:
        response = client.post("/orders", json={"id": "o-1", "quantity": 2})
        assert response.status_code == 202
        assert response.json() == {"stream": "ORDERS", "seq": 1}
        assert client.post("/orders", json={"id": "o-2"}).status_code == 422
        client.portal.call(broker.wait_until_idle)  # type: ignore[union-attr]
        assert seen == [b'{"id":"o-1","quantity":2}']
        assert broker.is_connected
    assert not broker.is_connected
    assert broker.subscriptions == []


async def test_lifespan_with_httpx_asgi_transport_on_a_real_server(nats_server: NatsServer) -> None:
    broker = JetStreamBroker(nats_server.url, fetch_wait=1.0)
    router = ConsumerRouter()
    processed = asyncio.Event()
    bodies: list[bytes] = []

    # The session's server is shared: other tests' orders may be in the stream's backlog too.
    @router.handle("orders.created", queue="fastapi-e2e")
    async def process(msg: Message) -> None:
        bodies.append(msg.body)
        if b'"id":"o-9"' in msg.body:
            processed.set()

    app = build_app(broker, router)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/orders", json={"id": "o-9", "quantity": 1})
            assert response.status_code == 202
            assert response.json()["stream"] == "ORDERS"
            await asyncio.wait_for(processed.wait(), 10)
    assert sum(b'"id":"o-9"' in body for body in bodies) == 1
    assert not broker.is_connected


async def test_app_lifespan_is_composed_and_outlives_the_handlers() -> None:
    events: list[str] = []
    broker = InMemoryBroker()
    router = ConsumerRouter()
    started = asyncio.Event()
    release = asyncio.Event()

    @router.handle("jobs.run", queue="runner")
    async def run(msg: Message) -> None:
        started.set()
        await release.wait()
        events.append("handler finished")

    @contextlib.asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        events.append("app startup")
        yield {"db": "pool"}
        events.append("app shutdown")

    app = FastAPI(lifespan=jetstream_lifespan(broker, router, lifespan=app_lifespan))

    @app.get("/state")
    async def state(broker: Broker = Depends(get_broker)) -> dict[str, object]:
        return {"db": "pool", "broker": type(broker).__name__}

    async with LifespanManager(app) as manager:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as client:
            assert (await client.get("/state")).json() == {"db": "pool", "broker": "InMemoryBroker"}
        assert manager._state["db"] == "pool"  # the app's own state is kept
        await broker.publish("jobs.run", b"x")
        await asyncio.wait_for(started.wait(), 5)
        asyncio.get_running_loop().call_soon(release.set)
    assert events == ["app startup", "handler finished", "app shutdown"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_startup_fails_clearly_when_nats_is_unreachable() -> None:
    broker = JetStreamBroker(f"nats://127.0.0.1:{_free_port()}", connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(ConnectError, match="could not connect to NATS"), TestClient(build_app(broker)):
        pass
    assert time.monotonic() - started < 5


def test_get_broker_without_the_lifespan_explains_itself() -> None:
    app = FastAPI()

    @app.get("/")
    async def route(broker: Broker = Depends(get_broker)) -> None:
        return None

    with TestClient(app) as client, pytest.raises(RuntimeError, match="jetstream_lifespan"):
        client.get("/")


def test_the_lifespan_says_what_it_runs_even_after_include_router() -> None:
    from fastapi import APIRouter

    from jetstream_fastapi.integration.lifespan import lifespan_of

    broker, router = InMemoryBroker(), ConsumerRouter()
    lifespan = jetstream_lifespan(broker, router)
    assert (lifespan.broker, lifespan.routers) == (broker, (router,))
    app = FastAPI(lifespan=lifespan)
    assert lifespan_of(app) is lifespan
    app.include_router(APIRouter())  # FastAPI wraps the lifespan in a merged one: still found
    assert lifespan_of(app) is lifespan
    assert lifespan_of(FastAPI()) is None
    with TestClient(app):  # and it still runs as a lifespan
        assert broker.is_connected
