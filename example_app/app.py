"""The orders service: an HTTP API that publishes orders and a consumer that processes them.

Each :func:`create_app` gets its own broker, consumer router and :class:`OrderStore`, so tests can run
several apps side by side (for example on an :class:`~jetstream_fastapi.InMemoryBroker`)::

    app = create_app(InMemoryBroker())

The admin surface (the admin page, ``GET /dead-letters``, ``POST /dead-letters/{seq}/replay``) needs the
token in ``ADMIN_TOKEN``: ``Authorization: Bearer <token>``, or, for the page in a browser, HTTP Basic
with any user name and the token as password. Without a token only the admin page is served, and only
for local use (``admin_router(insecure=True)``: requests to a loopback name), and only when the app
listens on loopback; in a container (``HOST=0.0.0.0``) there is no admin without a token.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from pydantic import BaseModel, Field
from starlette.datastructures import State

from jetstream_fastapi import (
    Broker,
    BrokerSettings,
    ConsumerRouter,
    DeadLetterAdmin,
    NotConnectedError,
    PublishError,
    PublishTimeoutError,
    admin_router,
    asyncapi_router,
    get_broker,
    health_router,
    jetstream_lifespan,
    metrics_router,
)

ORDERS_CREATED = "orders.created"
"""The subject new orders are published to."""
ORDER_PROCESSOR = "order-processor"
"""The queue (durable consumer) shared by every instance that processes orders."""
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
"""Where the app connects when ``NATS_URL`` is not set."""
MAX_BODY_SIZE = 64 * 1024
"""Largest request body accepted (bytes); larger ones get 413 before they are read. An order is far smaller."""
IDEMPOTENCY_KEY = r"^[A-Za-z0-9._:~+/=-]{1,128}$"
"""What an ``Idempotency-Key`` may be: 1 to 128 characters of a UUID, a ULID, base64 or a plain token."""
MIN_ADMIN_TOKEN = 16
"""Shortest ``ADMIN_TOKEN`` accepted: a guessable token would guard the dead letters in name only."""

Status = Literal["pending", "processed"]


class Order(BaseModel):
    """An order as the API accepts it and as it travels on ``orders.created`` (JSON)."""

    id: Annotated[str, Field(min_length=1, max_length=128)]
    item: Annotated[str, Field(max_length=1024)]
    quantity: Annotated[int, Field(gt=0)]


class OrderAccepted(BaseModel):
    """The answer to ``POST /orders``: where the order was stored on the stream."""

    id: str
    stream: str
    seq: int
    duplicate: bool
    """True when the ``Idempotency-Key`` was seen before: the order was not stored again."""


class OrderStatus(BaseModel):
    """The answer to ``GET /orders/{id}``."""

    id: str
    status: Status
    attempts: int
    """How many deliveries of the order the consumer has handled (0 while pending)."""


class Health(BaseModel):
    """The answer to ``GET /healthz``."""

    status: Literal["ok"]
    nats: bool


@dataclass(slots=True)
class _Record:
    status: Status = "pending"
    attempts: int = 0


class OrderStore:
    """What this process knows about orders: accepted (pending) or processed, and delivery counts."""

    def __init__(self) -> None:
        self._records: dict[str, _Record] = {}

    def accept(self, order_id: str) -> None:
        """Note an order as pending, unless the consumer got to it first."""
        self._records.setdefault(order_id, _Record())

    def mark_processed(self, order_id: str) -> None:
        """Note that the consumer handled one delivery of the order."""
        record = self._records.setdefault(order_id, _Record())
        record.status = "processed"
        record.attempts += 1

    def get(self, order_id: str) -> OrderStatus | None:
        """The order's status, or ``None`` if this process never saw it."""
        record = self._records.get(order_id)
        if record is None:
            return None
        return OrderStatus(id=order_id, status=record.status, attempts=record.attempts)


async def get_orders(request: Request) -> OrderStore:
    """FastAPI dependency: the app's :class:`OrderStore` (``async``, so FastAPI does not hop to its thread pool)."""
    orders: OrderStore = request.app.state.orders
    return orders


BrokerDep = Annotated[Broker, Depends(get_broker)]
OrdersDep = Annotated[OrderStore, Depends(get_orders)]

router = APIRouter()


def order_msg_id(order: Order, idempotency_key: str) -> str:
    """The msg id of ``order`` posted with ``idempotency_key``: the key scoped by the order it names and
    hashed, under a prefix of its own. A client's key is never the msg id itself, so it cannot match the
    msg id of another publisher (a replay's ``replay-...``, a dead letter's ``dlq-...``), and the same key
    sent with another order (another client's, say) is another message. An app that authenticates its
    clients adds the client's identity to the hash."""
    digest = hashlib.sha256(f"{order.id}\n{idempotency_key}".encode()).hexdigest()
    return f"order-{digest[:32]}"


@router.post("/orders", status_code=202)
async def create_order(
    order: Order,
    broker: BrokerDep,
    orders: OrdersDep,
    idempotency_key: Annotated[str | None, Header(pattern=IDEMPOTENCY_KEY)] = None,
) -> OrderAccepted:
    """Publish the order to ``orders.created``.

    A retry of the same order with the same ``Idempotency-Key`` within the stream's duplicate window (2
    minutes by default) is not stored again: the answer has the original ``seq`` and ``duplicate: true``.
    """
    msg_id = order_msg_id(order, idempotency_key) if idempotency_key else None
    try:
        ack = await order_created.publish(broker, order, msg_id=msg_id)
    except PublishTimeoutError as error:
        # No PubAck in time, but the message may have reached the stream (it is often stored after all):
        # only a retry with the same key is deduplicated by the server.
        detail = "order may have been stored; retry with the same Idempotency-Key"
        if not idempotency_key:
            detail += " (this request had none, so a retry may store the order twice)"
        detail = f"{detail}: {error}"
        raise HTTPException(status_code=503, detail=detail) from None
    except (PublishError, NotConnectedError) as error:
        raise HTTPException(status_code=503, detail=f"order not stored, try again: {error}") from None
    orders.accept(order.id)
    return OrderAccepted(id=order.id, stream=ack.stream, seq=ack.seq, duplicate=ack.duplicate)


@router.get("/orders/{order_id}")
async def read_order(order_id: str, orders: OrdersDep) -> OrderStatus:
    """Whether the order was processed; 404 if this process never saw it."""
    status = orders.get(order_id)
    if status is None:
        raise HTTPException(status_code=404, detail=f"order {order_id!r} not found")
    return status


@router.get("/healthz")
async def healthz(broker: BrokerDep) -> Health:
    """Liveness, and whether the NATS connection is up right now (kept for compatibility: probes should use
    ``/health/live`` and ``/health/ready``)."""
    return Health(status="ok", nats=getattr(broker, "is_connected", True))


class AdminToken:
    """FastAPI dependency: the request carries the admin token, as ``Authorization: Bearer <token>`` or,
    when ``basic`` (the admin page, in a browser that asks for it), as the password of HTTP Basic; else 401.

    Basic credentials are sent again by the browser on its own, cross-site requests included: only a
    router with a CSRF defence of its own (the admin page's) takes them.
    """

    def __init__(self, token: str, *, basic: bool = False) -> None:
        self._token = token.encode()
        self._basic = basic

    def __call__(self, request: Request) -> None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        given = b""
        if scheme.lower() == "bearer":
            given = credentials.strip().encode()
        elif scheme.lower() == "basic" and self._basic:
            given = _basic_password(credentials)
        if not (given and hmac.compare_digest(given, self._token)):  # constant time: no guessing by timing
            challenge = 'Basic realm="admin", charset="UTF-8"' if self._basic else "Bearer"
            raise HTTPException(status_code=401, detail="admin token needed", headers={"WWW-Authenticate": challenge})


def _basic_password(credentials: str) -> bytes:
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b""
    return decoded.partition(b":")[2]


def listens_on_loopback(host: str) -> bool:
    """Whether an app listening on ``host`` (uvicorn's ``--host``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _dead_letters(broker: Broker) -> DeadLetterAdmin:
    if not isinstance(broker, DeadLetterAdmin):
        raise HTTPException(status_code=501, detail="this broker keeps no dead letters")
    return broker


dead_letter_router = APIRouter()
"""The service's own dead-letter routes, for scripts: mounted only with an ``ADMIN_TOKEN`` (as a bearer)."""


@dead_letter_router.get("/dead-letters")
async def list_dead_letters(
    broker: BrokerDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    """Messages that were rejected or failed every attempt, oldest first, with why they died."""
    return [letter.as_dict() for letter in await _dead_letters(broker).list_dead_letters(limit)]


@dead_letter_router.post("/dead-letters/{seq}/replay", status_code=202)
async def replay_dead_letter(seq: int, broker: BrokerDep) -> dict[str, Any]:
    """Publish dead letter ``seq`` again to its original subject (after fixing what made it fail)."""
    try:
        ack = await _dead_letters(broker).replay_dead_letter(seq)
    except LookupError:
        raise HTTPException(status_code=404, detail=f"no dead letter with sequence {seq}") from None
    return {"stream": ack.stream, "seq": ack.seq}


async def order_store(state: State) -> OrderStore:
    """Dependency of the consumer: the app's :class:`OrderStore`, from the lifespan state."""
    orders: OrderStore = state.orders
    return orders


consumer_router = ConsumerRouter()
"""The service's consumers. Stateless: each app binds them to its own broker and lifespan state."""

order_created = consumer_router.publisher(ORDERS_CREATED, Order, description="An order accepted by POST /orders")
"""What ``POST /orders`` publishes (declared, so the AsyncAPI document lists it with its schema)."""


@consumer_router.handle(ORDERS_CREATED, queue=ORDER_PROCESSOR)
async def process_order(order: Order, orders: Annotated[OrderStore, Depends(order_store)]) -> None:
    """Process a new order. A body that is not a valid ``Order`` never reaches this function: it is
    dead-lettered with its validation error, not redelivered."""
    orders.mark_processed(order.id)


def create_app(
    broker: Broker | None = None, *, admin_token: str | None = None, local_admin: bool | None = None
) -> FastAPI:
    """The orders service on ``broker``; by default a :class:`~jetstream_fastapi.JetStreamBroker` built from
    the ``NATS_*`` environment variables (:class:`~jetstream_fastapi.BrokerSettings`: ``NATS_URL``,
    ``NATS_CREDS_FILE``, ``NATS_BATCH_SIZE``, ...) and a ``.env`` file.

    ``admin_token`` (default: ``ADMIN_TOKEN``, at least :data:`MIN_ADMIN_TOKEN` characters) guards the
    admin page and the dead-letter routes. Without one, ``local_admin`` (default: whether ``HOST`` is a
    loopback address, as it is by default) serves the admin page for local use only, and otherwise no
    admin at all."""
    token = admin_token if admin_token is not None else os.environ.get("ADMIN_TOKEN", "")
    if token and len(token) < MIN_ADMIN_TOKEN:
        raise ValueError(f"ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters (a random one)")
    if local_admin is None:
        local_admin = listens_on_loopback(os.environ.get("HOST", "127.0.0.1"))
    if broker is None:
        settings = BrokerSettings()
        broker = settings.broker() if settings.url else settings.broker(servers=DEFAULT_NATS_URL)
    orders = OrderStore()

    @contextlib.asynccontextmanager
    async def store_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"orders": orders}  # what order_store() reads, in handlers

    app = FastAPI(
        title="Orders",
        lifespan=jetstream_lifespan(broker, consumer_router, lifespan=store_lifespan),
        max_body_size=MAX_BODY_SIZE,
    )
    app.state.orders = orders
    app.include_router(router)
    # GET /health/live (liveness) and GET /health/ready (readiness: NATS, JetStream, the consumer).
    app.include_router(health_router())
    # GET /asyncapi.json and GET /asyncapi: every subject the service consumes and publishes, with schemas.
    description = "Orders accepted over HTTP and processed from JetStream."
    app.include_router(asyncapi_router(consumer_router, title="Orders", version="1.0.0", description=description))
    # GET /admin/jetstream: consumers and dead letters (replay, purge), behind the token; without one, for
    # local use only (insecure=True answers loopback names only), and not at all off loopback.
    if token:
        app.include_router(admin_router(dependencies=[Depends(AdminToken(token, basic=True))]))
        app.include_router(dead_letter_router, dependencies=[Depends(AdminToken(token))])
    elif local_admin:
        app.include_router(admin_router(insecure=True))
    # GET /metrics: Prometheus text format (publishes, handler runs by outcome, consumer lag, dead letters).
    app.include_router(metrics_router())
    return app
