"""Typed payloads and Depends in consumer handlers, on both brokers (``make_broker`` is parametrized)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import pytest
from fastapi import Depends
from pydantic import BaseModel, Field
from starlette.datastructures import State

from jetstream_fastapi import Broker, ConsumerRouter, InvalidHandlerError, Message
from jetstream_fastapi.integration.injection import HandlerPlan
from tests.conftest import BrokerFactory


class Order(BaseModel):
    id: str
    quantity: int = Field(gt=0)


@dataclasses.dataclass
class Point:
    x: int
    y: int


async def test_typed_payloads(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    router = ConsumerRouter()
    seen: dict[str, Any] = {}

    @router.handle(f"{prefix}.model", queue="model")
    async def on_model(order: Order, msg: Message) -> None:
        seen["model"] = (order, msg.headers.get("Content-Type"))

    @router.handle(f"{prefix}.bytes", queue="bytes")
    async def on_bytes(body: bytes) -> None:
        seen["bytes"] = body

    @router.handle(f"{prefix}.text", queue="text")
    async def on_text(text: str) -> None:
        seen["text"] = text

    @router.handle(f"{prefix}.json", queue="json")
    async def on_json(data: dict[str, list[int]]) -> None:
        seen["json"] = data

    @router.handle(f"{prefix}.point", queue="point")
    async def on_point(point: Point) -> None:
        seen["point"] = point

    await router.start(broker)
    await broker.publish(f"{prefix}.model", Order(id="o-1", quantity=2))
    await broker.publish(f"{prefix}.bytes", b"\x00raw")
    await broker.publish(f"{prefix}.text", "héllo")
    await broker.publish(f"{prefix}.json", b'{"a": [1, 2]}')
    await broker.publish(f"{prefix}.point", b'{"x": 1, "y": 2}')
    await broker.wait_until_idle()
    assert seen == {
        "model": (Order(id="o-1", quantity=2), "application/json"),
        "bytes": b"\x00raw",
        "text": "héllo",
        "json": {"a": [1, 2]},
        "point": Point(1, 2),
    }


async def test_invalid_payload_is_dead_lettered_with_the_validation_error(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker(max_deliver=5)
    router = ConsumerRouter()
    calls: list[Order] = []

    @router.handle(f"{prefix}.created", queue="typed")
    async def process(order: Order) -> None:
        calls.append(order)

    await router.start(broker)
    await broker.publish(f"{prefix}.created", b'{"id": "o-2", "quantity": 0}')
    await broker.publish(f"{prefix}.created", b"not json")
    await broker.wait_until_idle()
    assert calls == []
    letters = [d for d in await broker.list_dead_letters(limit=10_000) if d.subject.startswith(prefix)]
    assert sorted(d.attempts for d in letters) == [1, 1]  # rejected at once, never redelivered
    assert all(d.error_type == "Reject" and "invalid payload" in d.error for d in letters)
    assert any("greater than 0" in d.error for d in letters)


EVENTS: list[str] = []
CALLS = {"settings": 0}


def settings() -> dict[str, str]:  # sync: run in the thread pool, as in FastAPI
    CALLS["settings"] += 1
    return {"dsn": "db://x"}


async def session(config: Annotated[dict[str, str], Depends(settings)]) -> AsyncIterator[str]:
    EVENTS.append("open")
    yield f"session({config['dsn']})"
    EVENTS.append("close")


def audit(config: dict[str, str] = Depends(settings)) -> Iterator[str]:
    yield "audit"
    EVENTS.append("audit done")


def current_broker(broker: Broker) -> Broker:
    return broker


async def test_dependencies_with_yield_nesting_cache_broker_and_state(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    EVENTS.clear()
    CALLS["settings"] = 0
    router = ConsumerRouter()

    @router.handle(f"{prefix}.created", queue="di")
    async def handle(
        order: Order,
        db: Annotated[str, Depends(session)],
        state: State,
        log: str = Depends(audit),
        injected: Broker = Depends(current_broker),
    ) -> None:
        EVENTS.append(f"handle {order.id} {db} {log} {state.app_name} {injected is broker}")

    await router.start(broker, {"app_name": "orders"})
    await broker.publish(f"{prefix}.created", Order(id="o-3", quantity=1))
    await broker.wait_until_idle()
    assert EVENTS == ["open", "handle o-3 session(db://x) audit orders True", "audit done", "close"]
    assert CALLS["settings"] == 1  # one call per message for a dependency used twice


async def flaky_resource(msg: Message) -> AsyncIterator[None]:
    if msg.attempt == 1:
        raise RuntimeError("resource unavailable")
    yield
    if msg.attempt == 2:
        raise RuntimeError("commit failed in cleanup")  # the message must not have been acked yet


async def test_cleanup_runs_before_the_ack_and_dependency_errors_redeliver(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker()
    attempts: list[int] = []
    router = ConsumerRouter()

    @router.handle(f"{prefix}.created", queue="cleanup")
    async def process(msg: Message, _: None = Depends(flaky_resource)) -> None:
        attempts.append(msg.attempt)

    await router.start(broker)
    await broker.publish(f"{prefix}.created", b"x")
    await broker.wait_until_idle()
    assert attempts == [2, 3]  # attempt 1 failed in the dependency, attempt 2 in its cleanup


class Resource:
    """A dependency object whose ``__call__`` yields (FastAPI accepts these, as it accepts functions)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def __call__(self, msg: Message) -> AsyncIterator[str]:
        self.events.append(f"open {msg.attempt}")
        yield "resource"
        self.events.append(f"close {msg.attempt}")


async def test_a_callable_object_yielding_is_a_dependency_with_cleanup(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    resource = Resource()
    seen: list[str] = []
    router = ConsumerRouter()

    @router.handle(f"{prefix}.created", queue="objects")
    async def process(msg: Message, value: str = Depends(resource)) -> None:
        seen.append(value)
        resource.events.append("handle")

    await router.start(broker)
    await broker.publish(f"{prefix}.created", b"x")
    await broker.wait_until_idle()
    assert seen == ["resource"]
    assert resource.events == ["open 1", "handle", "close 1"]


def test_signature_mistakes_raise_at_registration() -> None:
    router = ConsumerRouter()

    with pytest.raises(InvalidHandlerError, match="two payload parameters"):

        @router.handle("a.b")
        async def two(order: Order, other: Order) -> None: ...

    with pytest.raises(InvalidHandlerError, match="annotate"):

        @router.handle("a.c")
        async def untyped(msg: Message, extra) -> None: ...  # type: ignore[no-untyped-def]

    with pytest.raises(InvalidHandlerError, match="must be Message, Broker, State or Depends"):

        @router.handle("a.d")
        async def bad_dependency(value: int = Depends(needs_request)) -> None: ...


def needs_request(request: int) -> int:
    return request


def test_plain_handler_is_not_wrapped() -> None:
    async def plain(msg: Message) -> None: ...

    async def unannotated(msg) -> None: ...  # type: ignore[no-untyped-def]

    assert HandlerPlan(plain).bind(None, None) is plain
    assert HandlerPlan(unannotated).bind(None, None) is unannotated


def test_callable_objects_are_handlers_too() -> None:
    class Handler:
        async def __call__(self, order: Order) -> None: ...

    plan = HandlerPlan(Handler())
    assert plan.payload == "order"
    assert not plan.plain
