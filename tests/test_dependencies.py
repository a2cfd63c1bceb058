"""Nothing the library hands to routes or handlers runs in the thread pool.

FastAPI (and our handler injection, which follows it) runs a plain ``def`` dependency or endpoint in
anyio's worker threads: a thread hop and ~200 µs of CPU per request for what is an attribute read
(issue #11: the README's route ran at 0.58x raw nats-py with a plain ``def get_broker``). Two checks:
the dependency tree FastAPI builds for every route the library provides, and a count of anyio
thread-pool calls while those routes and an injected handler actually run.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import anyio.to_thread
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, Depends, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.datastructures import State

from jetstream_fastapi import (
    Broker,
    ConsumerRouter,
    InMemoryBroker,
    Message,
    get_broker,
    health_router,
    jetstream_lifespan,
)
from tests.conftest import WAIT


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    """Every callable in a route's dependency tree, the endpoint included."""
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def _runs_on_the_loop(call: Callable[..., Any]) -> bool:
    """What FastAPI awaits directly (anything else goes through ``run_in_threadpool``)."""
    target = call if inspect.isroutine(call) else getattr(call, "__call__", call)  # noqa: B004
    return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)


def _app() -> FastAPI:
    """The README's route plus the health router: every route dependency the library provides."""
    app = FastAPI(lifespan=jetstream_lifespan(InMemoryBroker()))
    app.include_router(health_router())

    @app.post("/orders", status_code=202)
    async def create(broker: Broker = Depends(get_broker)) -> dict[str, object]:
        ack = await broker.publish("orders.created", Message(body=b"{}"))
        return {"stream": ack.stream, "seq": ack.seq}

    return app


def _library_routes() -> list[APIRoute]:
    """The health router's routes and a route taking ``Depends(get_broker)``, as FastAPI built them."""
    router = APIRouter()

    @router.post("/orders")
    async def create(broker: Broker = Depends(get_broker)) -> None: ...

    routes = [*health_router().routes, *router.routes]
    return [route for route in routes if isinstance(route, APIRoute)]


def test_every_library_dependency_is_awaited_on_the_loop() -> None:
    routes = _library_routes()
    assert {route.path for route in routes} == {"/health/live", "/health/ready", "/orders"}
    plain = [
        f"{route.path}: {getattr(call, '__qualname__', call)}"
        for route in routes
        for call in _calls(route.dependant)
        if not _runs_on_the_loop(call)
    ]
    assert plain == []
    assert _runs_on_the_loop(get_broker)


async def from_message(msg: Message) -> str:
    """A user's async dependency of a handler."""
    return msg.subject


class ThreadPoolCalls:
    """Counts ``anyio.to_thread.run_sync`` (what ``run_in_threadpool`` uses) while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        original = anyio.to_thread.run_sync

        async def counted(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            inner = getattr(func, "func", func)  # FastAPI hands over a functools.partial
            self.names.append(getattr(inner, "__qualname__", repr(inner)))
            return await original(func, *args, **kwargs)

        monkeypatch.setattr(anyio.to_thread, "run_sync", counted)


async def test_the_routes_never_touch_the_thread_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app()

    def plain_dependency() -> int:  # the control: the counter does see a plain def
        return 1

    @app.get("/control")
    async def control(value: int = Depends(plain_dependency)) -> int:
        return value

    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://deps.test") as client:
            pool = ThreadPoolCalls(monkeypatch)
            for method, path, status in [
                ("POST", "/orders", 202),
                ("GET", "/health/live", 200),
                ("GET", "/health/ready", 200),
            ]:
                response = await client.request(method, path)
                assert response.status_code == status, response.text
            assert pool.names == []
            assert (await client.get("/control")).status_code == 200
            assert pool.names == ["test_the_routes_never_touch_the_thread_pool.<locals>.plain_dependency"]


async def test_handler_injection_never_touches_the_thread_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, bool, bool]] = []
    done = asyncio.Event()
    router = ConsumerRouter()

    @router.handle("deps.in", queue="deps")
    async def handle(
        body: str, msg: Message, broker: Broker, state: State, subject: Annotated[str, Depends(from_message)]
    ) -> None:
        seen.append((body, isinstance(state, State), subject == msg.subject))
        done.set()

    broker = InMemoryBroker()
    pool = ThreadPoolCalls(monkeypatch)
    async with LifespanManager(FastAPI(lifespan=jetstream_lifespan(broker, router))):
        await broker.publish("deps.in", b"hello")
        async with asyncio.timeout(WAIT):
            await done.wait()
    assert seen == [("hello", True, True)]
    assert pool.names == []
