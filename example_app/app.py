"""The orders service: an HTTP API that stores orders and publishes them, a consumer that processes them,
and a billing consumer that writes each order's invoice exactly once.

Orders live in a SQLite file (``ORDERS_DB``; by default a file in a temporary directory of the app's own,
``orders.db`` in the working directory under ``python -m example_app``). ``POST /orders`` stores the order
and its ``OrderCreated`` event in one transaction (the transactional outbox): the event leaves once the
transaction committed, even if NATS is down meanwhile, and never for an order that was not stored. The
billing handler writes the invoice in the same transaction as the inbox's record of the message: a
redelivery never bills twice.

Each :func:`create_app` gets its own broker, database, outbox and inbox, so tests can run several apps side
by side (for example on an :class:`~jetstream_fastapi.InMemoryBroker`)::

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
import shutil
import tempfile
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from starlette.datastructures import State

from jetstream_fastapi import (
    Broker,
    BrokerSettings,
    ConsumerRouter,
    DeadLetterAdmin,
    Publication,
    admin_router,
    asyncapi_router,
    get_broker,
    health_router,
    jetstream_lifespan,
    metrics_router,
)
from jetstream_fastapi.inbox import Inbox
from jetstream_fastapi.outbox import Outbox

ORDERS_CREATED = "orders.created"
"""The subject new orders are published to."""
ORDER_PROCESSOR = "order-processor"
"""The queue (durable consumer) shared by every instance that processes orders."""
BILLING = "billing"
"""The queue (durable consumer) of the billing handler: one invoice per order, exactly once."""
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
    """The answer to ``POST /orders``: the order is stored, its event committed with it."""

    id: str
    msg_id: str
    """The ``Nats-Msg-Id`` its ``orders.created`` event carries."""
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


class Invoices(BaseModel):
    """The answer to ``GET /orders/{id}/invoices``: how many invoices billing wrote (1 once it billed)."""

    order_id: str
    invoices: int


metadata = MetaData()
orders_table = Table(
    "orders",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("item", String(1024), nullable=False),
    Column("quantity", Integer, nullable=False),
    # The msg id of a POST made with an Idempotency-Key: a retry finds its order by it.
    Column("msg_id", String(64), unique=True, nullable=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
)
invoices_table = Table(
    "invoices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # Not unique on purpose: what keeps a redelivery from billing twice is the inbox, not a constraint.
    Column("order_id", String(128), nullable=False, index=True),
    Column("quantity", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)


async def get_sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    """FastAPI dependency: the app's session factory (``async``, so FastAPI does not hop to its thread pool)."""
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return sessions


async def get_outbox(request: Request) -> Outbox:
    """FastAPI dependency: the app's :class:`~jetstream_fastapi.outbox.Outbox`."""
    outbox: Outbox = request.app.state.outbox
    return outbox


BrokerDep = Annotated[Broker, Depends(get_broker)]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessions)]
OutboxDep = Annotated[Outbox, Depends(get_outbox)]

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
    sessions: SessionsDep,
    outbox: OutboxDep,
    idempotency_key: Annotated[str | None, Header(pattern=IDEMPOTENCY_KEY)] = None,
) -> OrderAccepted:
    """Store the order and its ``orders.created`` event in one transaction; the outbox's relay publishes
    the event after the commit (NATS down: as soon as it answers again).

    A retry of the same order with the same ``Idempotency-Key`` finds the stored order: the answer is the
    first one's, with ``duplicate: true``. An order id stored before under another key (or none) is 409.
    """
    msg_id = order_msg_id(order, idempotency_key) if idempotency_key else None
    try:
        async with sessions() as session, session.begin():
            if msg_id is not None and await _stored_with(session, msg_id):
                return OrderAccepted(id=order.id, msg_id=msg_id, duplicate=True)
            values = {"id": order.id, "item": order.item, "quantity": order.quantity, "msg_id": msg_id}
            await session.execute(insert(orders_table).values(**values, status="pending", attempts=0))
            sent = await outbox.publish(session, ORDERS_CREATED, order, key=order.id, msg_id=msg_id)
    except IntegrityError:
        # Another request stored this order id first: the same retry running concurrently, or another order.
        async with sessions() as session:
            if msg_id is not None and await _stored_with(session, msg_id):
                return OrderAccepted(id=order.id, msg_id=msg_id, duplicate=True)
        raise HTTPException(status_code=409, detail=f"order {order.id!r} exists") from None
    return OrderAccepted(id=order.id, msg_id=sent, duplicate=False)


async def _stored_with(session: AsyncSession, msg_id: str) -> bool:
    found = await session.execute(select(orders_table.c.id).where(orders_table.c.msg_id == msg_id))
    return found.first() is not None


@router.get("/orders/{order_id}")
async def read_order(order_id: str, sessions: SessionsDep) -> OrderStatus:
    """Whether the order was processed; 404 if it was never stored nor delivered."""
    async with sessions() as session:
        row = (await session.execute(select(orders_table).where(orders_table.c.id == order_id))).first()
    if row is None:
        raise HTTPException(status_code=404, detail=f"order {order_id!r} not found")
    return OrderStatus(id=order_id, status=row.status, attempts=row.attempts)


@router.get("/orders/{order_id}/invoices")
async def read_invoices(order_id: str, sessions: SessionsDep) -> Invoices:
    """How many invoices billing wrote for the order: 1 once it was billed, never 2."""
    query = select(func.count()).where(invoices_table.c.order_id == order_id)
    async with sessions() as session:
        count = (await session.execute(query)).scalar_one()
    return Invoices(order_id=order_id, invoices=count)


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


async def database(state: State) -> async_sessionmaker[AsyncSession]:
    """Dependency of the consumers: the app's session factory, from the lifespan state."""
    sessions: async_sessionmaker[AsyncSession] = state.sessions
    return sessions


consumer_router = ConsumerRouter()
"""The order processor. Stateless: each app binds it to its own broker and lifespan state."""

order_created = Publication(ORDERS_CREATED, Order, description="An order stored by POST /orders, once it committed")
"""What ``POST /orders`` publishes through the outbox (declared on each app's outbox, so the AsyncAPI
document lists it with its schema)."""


@consumer_router.handle(ORDERS_CREATED, queue=ORDER_PROCESSOR)
async def process_order(order: Order, sessions: Annotated[async_sessionmaker[AsyncSession], Depends(database)]) -> None:
    """Process a new order: mark it processed and count the delivery (at least once: a redelivery counts
    again). An order that arrives without a POST here (another service, a replay) is stored. A body that
    is not a valid ``Order`` never reaches this function: it is dead-lettered with its validation error."""
    async with sessions() as session, session.begin():
        processed = update(orders_table).where(orders_table.c.id == order.id)
        result: Any = await session.execute(processed.values(status="processed", attempts=orders_table.c.attempts + 1))
        if result.rowcount == 0:
            values = {"id": order.id, "item": order.item, "quantity": order.quantity}
            await session.execute(insert(orders_table).values(**values, status="processed", attempts=1))


def billing_router(inbox: Inbox) -> ConsumerRouter:
    """The billing consumer of an app's ``inbox``: one invoice per order, exactly once."""
    router = ConsumerRouter()

    @router.handle(ORDERS_CREATED, queue=BILLING)
    async def bill(order: Order, session: AsyncSession = Depends(inbox.session)) -> None:
        """Write the order's invoice. The inbox records the message in this transaction, commits, then
        acks: a redelivery of a billed order is acked without running this again."""
        values = {"order_id": order.id, "quantity": order.quantity, "created_at": time.time()}
        await session.execute(insert(invoices_table).values(**values))

    return router


def database_path() -> Path:
    """Where the orders are kept: ``ORDERS_DB``, or a file in a new temporary directory."""
    configured = os.environ.get("ORDERS_DB")
    if configured:
        return Path(configured)
    return Path(tempfile.mkdtemp(prefix="orders-")) / "orders.db"


def create_app(
    broker: Broker | None = None,
    *,
    admin_token: str | None = None,
    local_admin: bool | None = None,
    database: str | Path | None = None,
) -> FastAPI:
    """The orders service on ``broker``; by default a :class:`~jetstream_fastapi.JetStreamBroker` built from
    the ``NATS_*`` environment variables (:class:`~jetstream_fastapi.BrokerSettings`: ``NATS_URL``,
    ``NATS_CREDS_FILE``, ``NATS_BATCH_SIZE``, ...) and a ``.env`` file.

    ``admin_token`` (default: ``ADMIN_TOKEN``, at least :data:`MIN_ADMIN_TOKEN` characters) guards the
    admin page and the dead-letter routes. Without one, ``local_admin`` (default: whether ``HOST`` is a
    loopback address, as it is by default) serves the admin page for local use only, and otherwise no
    admin at all.

    ``database`` is the SQLite file of the orders (default: :func:`database_path`); its tables are created
    at startup."""
    token = admin_token if admin_token is not None else os.environ.get("ADMIN_TOKEN", "")
    if token and len(token) < MIN_ADMIN_TOKEN:
        raise ValueError(f"ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters (a random one)")
    if local_admin is None:
        local_admin = listens_on_loopback(os.environ.get("HOST", "127.0.0.1"))
    if broker is None:
        settings = BrokerSettings()
        broker = settings.broker() if settings.url else settings.broker(servers=DEFAULT_NATS_URL)
    path = Path(database) if database is not None else database_path()
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    outbox = Outbox(engine)
    outbox.add_publication(order_created)
    inbox = Inbox(sessions)

    @contextlib.asynccontextmanager
    async def database_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        await outbox.create_tables()
        await inbox.create_tables()
        try:
            yield {"sessions": sessions}  # what database() reads, in handlers
        finally:
            await engine.dispose()

    lifespan = jetstream_lifespan(
        broker, consumer_router, billing_router(inbox), lifespan=database_lifespan, outbox=outbox, inbox=inbox
    )
    app = FastAPI(title="Orders", lifespan=lifespan, max_body_size=MAX_BODY_SIZE)
    app.state.sessions = sessions
    app.state.outbox = outbox
    if database is None and not os.environ.get("ORDERS_DB"):
        weakref.finalize(app, shutil.rmtree, path.parent, True)  # the temporary directory goes with the app
    app.include_router(router)
    # GET /health/live (liveness) and GET /health/ready (readiness: NATS, JetStream, the consumer).
    app.include_router(health_router())
    # GET /asyncapi.json and GET /asyncapi: every subject the service consumes and publishes, with schemas.
    description = "Orders stored over HTTP, published through the outbox, processed and billed from JetStream."
    routers = (consumer_router, billing_router(inbox))
    documented = asyncapi_router(*routers, outboxes=[outbox], title="Orders", version="1.0.0", description=description)
    app.include_router(documented)
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
