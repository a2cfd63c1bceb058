"""Health probes: ``GET /health/live`` and ``GET /health/ready`` for Kubernetes, Docker and load balancers.

::

    app = FastAPI(lifespan=jetstream_lifespan(broker, consumer_router))
    app.include_router(health_router())

* **Liveness** (``/health/live``) answers ``200 {"status": "ok"}`` whenever the process serves HTTP. It
  never asks NATS: a server outage must not make an orchestrator restart every healthy instance.
* **Readiness** (``/health/ready``) answers ``200`` only when the broker is connected, JetStream answers a
  cheap request within ``timeout`` seconds, and every consumer worker is running; otherwise ``503``. The
  body is the same :class:`Readiness` document either way, so a failing probe says why. It turns ``503``
  while the connection is being re-established and ``200`` again once it is back.

The probe asks the server (a JetStream request, and one per durable consumer for its pause) at most once
per ``cache_seconds`` (1 s by default, as metrics do), however many orchestrators and load balancers probe
it; what the broker knows without asking (connected, consumers running) is read at every probe.

The broker is the one :func:`~jetstream_fastapi.jetstream_lifespan` put in the lifespan state; before
startup (or in an app without that lifespan) readiness is a ``503`` naming the problem, never a ``500``.
An app that manages its broker itself passes it: ``health_router(broker=broker)``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from ..core.redaction import redact
from ..driver import Broker, Subscriber
from ..errors import InvalidArgumentError
from .lifespan import OUTBOX_KEY, STATE_KEY

__all__ = ["ConsumerHealth", "Liveness", "OutboxHealth", "Readiness", "check_readiness", "health_router"]

_NO_BROKER = (
    "no JetStream broker yet: the app's lifespan has not started, or the app was not created with "
    "FastAPI(lifespan=jetstream_lifespan(broker, ...)) (or pass health_router(broker=...))"
)


class Liveness(BaseModel):
    """The answer to the liveness probe."""

    status: Literal["ok"] = "ok"


class ConsumerHealth(BaseModel):
    """One running subscription, as the readiness probe reports it."""

    subject: str
    """The subject (or wildcard filter) it consumes."""
    queue: str | None
    """The durable consumer's name, or ``None`` for an ephemeral consumer."""
    state: str
    """``"running"`` when it pulls messages; ``"new"``, ``"stopping"`` or ``"stopped"`` otherwise."""
    in_flight: int
    """Handlers running now."""
    last_error: str | None
    """The last problem the worker met (a refused pull, a failed consumer recreate), or ``None``."""
    active: bool | None = None
    """With ``exclusive=True``: whether this instance is the queue's active one (the others stand by);
    ``None`` for a subscription that is not exclusive."""
    paused_until: datetime | None = None
    """Until when its durable consumer is paused on the server (``broker.pause``); ``None`` if it is not.
    A paused consumer is ready: it was paused on purpose."""
    dead_letters_lost: int = 0
    """Messages it terminated without a dead letter because the server refused the letter for good (each
    logged at ERROR). Not a reason to be unready: an alert to raise."""


class OutboxHealth(BaseModel):
    """The outbox table, as the readiness probe reports it (with ``jetstream_lifespan(..., outbox=...)``)."""

    backlog: int | None
    """Rows waiting to be published (``None``: the database did not answer within the probe's timeout)."""
    oldest_age: float | None
    """Seconds since the oldest waiting row was written."""
    failed: int | None
    """Rows that could neither be published nor dead-lettered: they wait for an operator."""
    last_error: str | None = None
    """The relay's last problem (the database or NATS unreachable), ``None`` after a good round."""


class Readiness(BaseModel):
    """The answer to the readiness probe (``200`` when ``ready``, ``503`` otherwise)."""

    ready: bool
    """``connected`` and ``jetstream`` and every consumer ``running``."""
    connected: bool
    """Whether the NATS connection is up right now (False before startup and while reconnecting)."""
    jetstream: bool
    """Whether JetStream answered within the probe's timeout (not asked while disconnected)."""
    consumers: list[ConsumerHealth]
    """Every subscription of the broker."""
    detail: str | None = None
    """Why the app is not ready, for humans reading a failed probe; ``None`` when ready."""
    dead_letters_lost: int = 0
    """Every consumer's ``dead_letters_lost`` added up (this process, since its subscriptions started)."""
    outbox: OutboxHealth | None = None
    """The outbox's backlog, when the app has one (reported; a backlog does not make the app unready)."""


def _consumer_health(subscription: Subscriber) -> ConsumerHealth:
    return ConsumerHealth(
        subject=subscription.subject,
        queue=subscription.queue,
        state=subscription.state,
        in_flight=subscription.in_flight,
        # A backend's error text may quote a server URL (one of nats-py's, say): never its user info.
        last_error=None if subscription.last_error is None else redact(subscription.last_error),
        active=subscription.active,
        dead_letters_lost=subscription.counters["dead_letters_lost"],
    )


def _grouped(subscriptions: Iterable[Subscriber]) -> list[Subscriber]:
    """The subscriptions, the partitions of a key-ordered queue as one (its ``group``)."""
    shown: list[Subscriber] = []
    groups: set[int] = set()
    for sub in subscriptions:
        group = getattr(sub, "group", None)
        if group is None:
            shown.append(sub)
        elif id(group) not in groups:
            groups.add(id(group))
            shown.append(group)
    return shown


def _describe(consumer: ConsumerHealth) -> str:
    queue = f" (queue {consumer.queue})" if consumer.queue else ""
    return f"{consumer.subject}{queue} is {consumer.state}"


async def _ping(broker: Broker, timeout: float) -> bool:
    try:
        # The brokers bound the request themselves; this also bounds a third-party ping that does not.
        async with asyncio.timeout(timeout + 1.0):
            return bool(await broker.ping(timeout))
    except Exception:
        return False


async def _paused(broker: Broker, consumers: list[ConsumerHealth], timeout: float) -> dict[str, datetime | None]:
    """Until when each paused durable consumer is paused, from the server's consumer states (one request
    per durable consumer); empty if the broker cannot say or the server is slow."""
    states = getattr(broker, "consumer_states", None)
    if states is None or not any(consumer.queue for consumer in consumers):
        return {}
    try:
        async with asyncio.timeout(timeout):
            return {state.name: state.paused_until for state in await states() if state.paused}
    except Exception:
        return {}


class _ServerAnswers:
    """What the server said at the last check, reused for ``seconds``: whether JetStream answered, and
    which consumers are paused. One check at a time: concurrent probes share it."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._lock = asyncio.Lock()
        self._broker: Broker | None = None
        self._answers: tuple[bool, dict[str, datetime | None]] = (False, {})
        self._read_at = -float("inf")

    async def read(
        self, broker: Broker, consumers: list[ConsumerHealth], timeout: float
    ) -> tuple[bool, dict[str, datetime | None]]:
        async with self._lock:
            fresh = time.monotonic() - self._read_at < self._seconds
            if not (fresh and self._broker is broker):
                jetstream = await _ping(broker, timeout)
                self._answers = (jetstream, await _paused(broker, consumers, timeout) if jetstream else {})
                self._broker, self._read_at = broker, time.monotonic()
            return self._answers


async def outbox_health(outbox: Any, timeout: float) -> OutboxHealth:
    """Backlog, oldest row's age and failed rows of ``outbox`` (an :class:`~jetstream_fastapi.outbox.Outbox`),
    with ``None`` figures when its database does not answer within ``timeout`` seconds."""
    relay = outbox.relay
    last_error = relay.last_error if relay is not None else "the relay is not running"
    try:
        async with asyncio.timeout(timeout):
            stats = await outbox.stats()
    except Exception as error:
        return OutboxHealth(backlog=None, oldest_age=None, failed=None, last_error=f"database: {type(error).__name__}")
    return OutboxHealth(
        backlog=stats.backlog, oldest_age=round(stats.oldest_age, 3), failed=stats.failed, last_error=last_error
    )


async def check_readiness(broker: Broker | None, *, timeout: float = 1.0) -> Readiness:
    """The readiness of ``broker``: connected, JetStream answering within ``timeout`` s, every consumer running.

    ``None`` (no broker yet) is not ready. Never raises for a broker's failure; usable outside FastAPI
    (a CLI check, a custom route). Asks the server at every call (the probe of :func:`health_router`
    caches its answers).
    """
    return await _check(broker, timeout, _ServerAnswers(0.0))


async def _check(broker: Broker | None, timeout: float, server: _ServerAnswers) -> Readiness:
    if timeout <= 0:
        raise InvalidArgumentError(f"timeout must be positive, got {timeout!r}")
    if broker is None:
        return Readiness(ready=False, connected=False, jetstream=False, consumers=[], detail=_NO_BROKER)
    connected = bool(broker.is_connected)
    consumers = [_consumer_health(sub) for sub in _grouped(broker.subscriptions)]
    jetstream, paused = await server.read(broker, consumers, timeout) if connected else (False, {})
    for consumer in consumers:
        if consumer.queue is not None:
            consumer.paused_until = paused.get(consumer.queue)
    stopped = [consumer for consumer in consumers if consumer.state != "running"]
    problems: list[str] = []
    if not connected:
        problems.append("not connected to NATS (not started, reconnecting, or shut down)")
    elif not jetstream:
        problems.append(f"JetStream did not answer within {timeout:g}s")
    if stopped:
        problems.append("consumer " + ", ".join(map(_describe, stopped)))
    return Readiness(
        ready=not problems,
        connected=connected,
        jetstream=jetstream,
        consumers=consumers,
        detail="; ".join(problems) or None,
        dead_letters_lost=sum(consumer.dead_letters_lost for consumer in consumers),
    )


def health_router(
    *,
    broker: Broker | None = None,
    prefix: str = "/health",
    live_path: str = "/live",
    ready_path: str = "/ready",
    timeout: float = 1.0,
    tags: Sequence[str | Enum] = ("health",),
    include_in_schema: bool = True,
    cache_seconds: float = 1.0,
) -> APIRouter:
    """An ``APIRouter`` with the liveness (``prefix + live_path``) and readiness (``prefix + ready_path``) probes.

    ``broker`` defaults to the one in the lifespan state of :func:`~jetstream_fastapi.jetstream_lifespan`.
    ``timeout`` bounds the JetStream request of each readiness check; keep it below the probe's own
    timeout (Kubernetes ``timeoutSeconds``, 1 s by default). ``cache_seconds`` is how long the server's
    answers are reused by later probes (``0``: asked at every probe). ``app.include_router(health_router())``.
    """
    if timeout <= 0:
        raise InvalidArgumentError(f"timeout must be positive, got {timeout!r}")
    if not isinstance(cache_seconds, int | float) or cache_seconds < 0:
        raise InvalidArgumentError(f"cache_seconds must be zero or positive, got {cache_seconds!r}")
    server = _ServerAnswers(cache_seconds)
    for name, path in (("live_path", live_path), ("ready_path", ready_path)):
        if not path.startswith("/"):
            raise InvalidArgumentError(f"{name} must start with '/', got {path!r}")
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise InvalidArgumentError(f"prefix must start and not end with '/', got {prefix!r}")
    router = APIRouter(prefix=prefix, tags=list(tags), include_in_schema=include_in_schema)

    @router.get(live_path, response_model=Liveness, summary="Liveness probe")
    async def live() -> Liveness:
        """``200 {"status": "ok"}`` while the process serves HTTP; never asks NATS."""
        return Liveness()

    @router.get(
        ready_path,
        response_model=Readiness,
        summary="Readiness probe",
        responses={503: {"model": Readiness, "description": "Not ready: the body says why"}},
    )
    async def ready(request: Request, response: Response) -> Readiness:
        """``200`` when connected, JetStream answers and every consumer runs; ``503`` otherwise."""
        current = broker if broker is not None else getattr(request.state, STATE_KEY, None)
        result = await _check(current, timeout, server)
        outbox = getattr(request.state, OUTBOX_KEY, None)
        if outbox is not None:
            result.outbox = await outbox_health(outbox, timeout)
        response.headers["Cache-Control"] = "no-store"
        if not result.ready:
            response.status_code = 503
        return result

    return router
