"""FastAPI glue: the lifespan that connects the broker and runs the consumers, and ``get_broker``.

::

    app = FastAPI(lifespan=jetstream_lifespan(broker, consumer_router))

    @app.post("/orders", status_code=202)
    async def create(order: Order, broker: Broker = Depends(get_broker)) -> dict[str, object]: ...

With ``outbox=`` (a :class:`jetstream_fastapi.outbox.Outbox`) its relay runs from before the handlers start
until after they stopped, so that what handlers publish through the outbox is relayed; with ``inbox=`` (a
:class:`jetstream_fastapi.inbox.Inbox`) its old rows are pruned meanwhile.

Startup: connect (a :class:`~jetstream_fastapi.errors.ConnectError` fails startup, no degraded start),
enter the app's own lifespan, declare the recurring schedules of every router (at once, so that one
router's schedules are not reported as undeclared by another's), then subscribe every handler of every
router (warning about a handler without a queue: it misses what was published while the app was down,
and, when this is one of several worker processes, every process gets each of its messages:
:mod:`~jetstream_fastapi.integration.workers`).
Shutdown runs in reverse: stop the consumers (in-flight handlers finish, the rest is given back), leave
the app's lifespan (its resources outlive the handlers that use them), then drain and close the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from starlette.requests import HTTPConnection

from ..driver import Broker, Subscriber
from ..observability.hooks import observe_outbox
from .routing import ConsumerRouter, declare_schedules
from .workers import warn_fan_out, warn_without_queue

STATE_KEY = "jetstream_broker"
"""The lifespan-state key under which the broker is stored (``request.state.jetstream_broker``)."""
SCHEDULES_KEY = "jetstream_schedules"
"""The lifespan-state key of the startup's :class:`~jetstream_fastapi.core.recurring.ScheduleReport`
(``request.state.jetstream_schedules``; ``None`` when the routers have no handler and no schedule)."""

OUTBOX_KEY = "jetstream_outbox"
"""The lifespan-state key of the ``outbox=`` given to :func:`jetstream_lifespan` (for readiness and metrics)."""


class Relayed(Protocol):
    """What the lifespan needs of an outbox (:class:`jetstream_fastapi.outbox.Outbox`): a relay to run."""

    async def start(self, broker: Any) -> None:
        """Start relaying through the connected ``broker``."""
        ...

    async def stop(self) -> None:
        """Stop relaying (the round in progress finishes)."""
        ...


AppLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]
"""The app's own lifespan, as FastAPI takes it: it may yield a state mapping or nothing."""
Lifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any]]]
"""What :func:`jetstream_lifespan` returns: it always yields the lifespan state."""


def jetstream_lifespan(
    broker: Broker,
    *routers: ConsumerRouter,
    lifespan: AppLifespan | None = None,
    outbox: Relayed | None = None,
    inbox: Relayed | None = None,
) -> JetStreamLifespan:
    """A FastAPI ``lifespan`` running ``broker``, the handlers of ``routers``, the relay of ``outbox`` and
    the pruning of ``inbox``, around ``lifespan``.

    The returned :class:`JetStreamLifespan` keeps what it runs (``.broker``, ``.routers``, ``.outbox``,
    ``.inbox``), so that tools find them from the app alone (:func:`lifespan_of`; ``jetstream-fastapi
    asyncapi module:app``)."""
    return JetStreamLifespan(broker, routers, lifespan, outbox=outbox, inbox=inbox)


class JetStreamLifespan:
    """What :func:`jetstream_lifespan` returns: a FastAPI lifespan that says what it runs.

    ``broker``, ``routers``, ``outbox`` and ``inbox`` are what the app runs; :func:`lifespan_of` finds this
    object from the app, also after FastAPI merged it with the lifespans of included routers."""

    def __init__(
        self,
        broker: Broker,
        routers: tuple[ConsumerRouter, ...],
        lifespan: AppLifespan | None,
        *,
        outbox: Relayed | None = None,
        inbox: Relayed | None = None,
    ) -> None:
        self.broker = broker
        self.routers = routers
        self.lifespan = lifespan
        self.outbox = outbox
        self.inbox = inbox

    def __call__(self, app: Any) -> AbstractAsyncContextManager[Mapping[str, Any]]:
        return self._run(app)

    @contextlib.asynccontextmanager
    async def _run(self, app: Any) -> AsyncIterator[Mapping[str, Any]]:
        broker, outbox, inbox = self.broker, self.outbox, self.inbox
        await broker.connect()
        try:
            async with contextlib.AsyncExitStack() as stack:
                state: dict[str, Any] = {}
                if self.lifespan is not None:
                    inner: Mapping[str, Any] | None = await stack.enter_async_context(self.lifespan(app))
                    state.update(inner or {})
                state[STATE_KEY] = broker
                if outbox is not None:
                    await outbox.start(broker)
                    stack.push_async_callback(outbox.stop)  # after the handlers stopped: they may publish
                    state[OUTBOX_KEY] = outbox
                    observe_outbox(outbox)
                if inbox is not None:
                    await inbox.start(broker)
                    stack.push_async_callback(inbox.stop)
                subscribers: list[Subscriber] = []
                stack.push_async_callback(_stop, subscribers)
                state[SCHEDULES_KEY] = await declare_schedules(broker, self.routers)
                for router in self.routers:
                    subscribers += await router.start(broker, state, schedules=False)
                warn_fan_out(subscribers)
                warn_without_queue(
                    (spec.subject, spec.queue, spec.options) for router in self.routers for spec in router
                )
                yield state
        finally:
            await broker.disconnect()

    def __repr__(self) -> str:
        return f"JetStreamLifespan(broker={self.broker!r}, routers={list(self.routers)!r})"


def lifespan_of(app: Any) -> JetStreamLifespan | None:
    """The :class:`JetStreamLifespan` an app (FastAPI or Starlette) runs, or ``None``.

    FastAPI wraps the app's lifespan in a new function at each ``include_router`` (merging the included
    router's lifespan): the search follows the wrapped functions' closures down to ours."""
    router = getattr(app, "router", None)
    return _find(getattr(router, "lifespan_context", None), depth=16, seen=set())


def _find(obj: object, depth: int, seen: set[int]) -> JetStreamLifespan | None:
    if isinstance(obj, JetStreamLifespan):
        return obj
    if depth == 0 or id(obj) in seen or not callable(obj):
        return None
    seen.add(id(obj))
    inner: list[object] = [getattr(obj, "__wrapped__", None)]
    for cell in getattr(obj, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            inner.append(cell.cell_contents)
    for candidate in inner:
        found = _find(candidate, depth - 1, seen)
        if found is not None:
            return found
    return None


async def _stop(subscribers: list[Subscriber]) -> None:
    await asyncio.gather(*(sub.unsubscribe() for sub in subscribers))


async def get_broker(connection: HTTPConnection) -> Broker:
    """FastAPI dependency: the broker of the app's ``jetstream_lifespan`` (``Depends(get_broker)``).

    ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
    and ~200 µs of CPU per request for this one attribute read.
    """
    # The lifespan state as the dict the server copied into this request's scope: ``connection.state``
    # would wrap that same dict in a new ``State`` first, a microsecond or two on every request.
    state = connection.scope.get("state")
    broker = state.get(STATE_KEY) if state is not None else None
    if broker is None:
        raise RuntimeError(
            "no JetStream broker in the lifespan state: create the app with "
            "FastAPI(lifespan=jetstream_lifespan(broker, ...))"
        )
    return broker  # type: ignore[no-any-return]
