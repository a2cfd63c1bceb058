"""The broker's front: everything a caller sees, written once over a :class:`~jetstream_fastapi.backends.base.Backend`.

:class:`~jetstream_fastapi.JetStreamBroker` and :class:`~jetstream_fastapi.InMemoryBroker` are this class
with a backend each; so a test on memory runs the very code that runs in production, and the two cannot
drift. Here, and only here: argument checks and the one set of defaults, msg ids, the size check (headers
included), ``publish_many`` results, the dead-letter policy, the subscription registry, idleness, and the
mapping of every failure below into the library's errors (nothing from ``nats`` reaches a caller; the
original stays as ``__cause__``).

This module holds the lifecycle and publishing (``publish``, ``request``, ``publish_many``,
``publish_batch``); its bases hold the rest, each in a module of its own: :mod:`.front` (the shared state
and the error mapping), :mod:`.consuming` (``subscribe``, ``wait_until_idle``), :mod:`.dead_letters`
(storing, listing, replaying and purging dead letters), :mod:`.recurring` (recurring schedules) and
:mod:`.operations` (consumer states, pause and resume).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

from ..backends.base import Backend, Outgoing
from ..driver import MSG_ID_HEADER, Message, Payload, PubAck
from ..errors import (
    InvalidArgumentError,
    JetStreamError,
    NotConnectedError,
    PayloadTooLargeError,
    PublishBatchError,
    PublishTimeoutError,
)
from .batches import BatchItem, batch_id_of, batch_items, one_stream
from .consuming import Consuming
from .dead_letters import DeadLetters
from .front import NOT_CONNECTED
from .operations import Operations
from .options import FrontSettings
from .payloads import headers_size
from .publish_options import check_server_version, item_conditions, publish_conditions
from .recurring import RecurringSchedules
from .requests import Replier, Requester, check_request, request_timeout

logger = logging.getLogger("jetstream_fastapi")


class BaseBroker(Consuming, DeadLetters, RecurringSchedules, Operations):
    """Publishes with PubAck and runs consumers, over a backend (see the module docstring)."""

    def __init__(self, backend: Backend, settings: FrontSettings) -> None:
        super().__init__(backend, settings)
        self._lock = asyncio.Lock()
        self._requests = Requester(backend, self._send)
        self._replier = Replier(backend)
        self._figures: Any = None  # the scrape-time figures of metrics_router(), created at the first scrape

    @property
    def publish_timeout(self) -> float:
        """The default total deadline of a publish, in seconds."""
        return self._settings.publish_timeout

    @property
    def streams(self) -> tuple[object, ...]:
        """The declared streams (created or reconciled at connect)."""
        return self._settings.streams.declared

    @property
    def auto_provision(self) -> bool:
        """Whether a subject no stream captures gets a stream of its own."""
        return self._settings.streams.auto_provision

    @property
    def stream_mismatch(self) -> str:
        """What a declared stream differing on the server leads to: ``"error"``, ``"warn"`` or ``"update"``."""
        return self._settings.streams.on_mismatch

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """Whether the broker can publish right now (False before ``connect``, while reconnecting, after
        ``disconnect``)."""
        return self._opened and self._backend.is_connected

    async def ping(self, timeout: float = 1.0) -> bool:
        """Whether the server answers right now, within ``timeout`` seconds; False (never an exception)
        before ``connect``, while reconnecting and after ``disconnect``. The readiness probe's question."""
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidArgumentError(f"timeout must be positive, got {timeout!r}")
        if not self._opened:
            return False
        return await self._backend.ping(timeout)

    async def connect(self) -> None:
        """Connect, check that the server answers, and create or reconcile the declared streams (idempotent)."""
        async with self._lock:
            if self._opened:
                return
            try:
                await self._backend.open()
            except JetStreamError:
                raise
            except Exception as error:
                raise self._translate(error) from error
            self._opened = True
            if self._observer is not None:
                self._observer.connected(self)  # the scrape-time figures, for OpenTelemetry's readers

    async def disconnect(self) -> None:
        """Stop every subscription (see :meth:`Subscription.unsubscribe`), then flush and close (idempotent)."""
        async with self._lock:
            if not self._opened:
                return
            await asyncio.gather(*(sub.unsubscribe() for sub in list(self._subscriptions)))
            self._opened = False
            self._preparer.forget()
            self._requests.forget()
            await self._backend.close(max(1.0, min(5.0, self.shutdown_timeout)))

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.disconnect()

    # -- publish -----------------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        message: Payload,
        *,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        ttl: float | None = None,
        expected_stream: str | None = None,
        expected_last_sequence: int | None = None,
        expected_last_subject_sequence: int | None = None,
        expected_last_msg_id: str | None = None,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
    ) -> PubAck:
        """Store ``message`` on ``subject`` and return the server's :class:`PubAck`.

        ``msg_id`` (the ``Nats-Msg-Id`` header) defaults to a fresh unique id, so that this method's own
        retries of a transient failure are stored once. ``timeout`` (default ``publish_timeout``) is the
        total deadline across retries; past it :class:`PublishTimeoutError` is raised, and the message
        may still have been stored: retry with the same ``msg_id``.

        ``ttl`` (seconds, at least 1) has the stream remove the message after that time (the stream must
        allow it: :class:`StreamFlagError` otherwise). The ``expected_*`` conditions make the publish
        optimistic: if one does not hold, nothing is stored and :class:`PublishConflictError` says the
        current sequence (see :mod:`~jetstream_fastapi.core.publish_options`). With ``delay`` (seconds or a
        ``timedelta``) or ``at`` (an aware ``datetime``) the message is kept by the server and delivered
        to ``subject`` at that time (see :mod:`~jetstream_fastapi.core.delayed`); the PubAck is the
        stored schedule's.
        """
        if not self._opened:
            raise NotConnectedError(NOT_CONNECTED)
        conditions = publish_conditions(
            ttl=ttl,
            expected_stream=expected_stream,
            expected_last_sequence=expected_last_sequence,
            expected_last_subject_sequence=expected_last_subject_sequence,
            expected_last_msg_id=expected_last_msg_id,
            delay=delay,
            at=at,
        )
        outgoing = self._prepare(subject, message, msg_id, headers)
        if conditions is not None:
            check_server_version(conditions.features, self._backend.server_version)
            outgoing.conditions = conditions
        return await self._send(outgoing, self._deadline(timeout))

    async def request(
        self, subject: str, message: Payload, *, headers: dict[str, str] | None = None, timeout: float | None = None
    ) -> Message:
        """Store a request on ``subject``, as :meth:`publish` does, and return its handler's reply: a
        :class:`Message` whose body is what the handler returned, encoded as ``publish`` encodes it.

        ``timeout`` (default ``publish_timeout``) bounds publishing and waiting together; past it
        :class:`ReplyTimeoutError`. A handler that fails for good (rejected, its last attempt) raises
        :class:`RemoteHandlerError` here. See :mod:`~jetstream_fastapi.core.requests`.
        """
        total = request_timeout(timeout, self._settings.publish_timeout)
        check_request(message, headers)
        self._require()
        return await self._below(self._requests.request(self._prepare(subject, message, None, headers), total))

    async def _send(self, outgoing: Outgoing, total: float) -> PubAck:
        """Store a prepared message, within its span when tracing."""
        if self._observer is None:
            return await self._store(outgoing, total)
        watch = self._observer.publishing(outgoing)
        try:
            self._check_traced_size(outgoing)
            ack = await self._store(outgoing, total)
        except BaseException as error:
            watch.done(None, error)
            raise
        watch.done(ack, None)
        return ack

    def _check_traced_size(self, outgoing: Outgoing) -> None:
        # The trace context joined the headers after _prepare's check: count them too.
        if self._observer is not None and self._observer.tracing and len(outgoing.headers) > 1:
            size = len(outgoing.body) + headers_size(outgoing.headers)
            if size > self._backend.max_payload:
                raise PayloadTooLargeError(outgoing.subject, size, self._backend.max_payload)

    async def publish_many(
        self,
        messages: Iterable[tuple[str, Payload] | tuple[str, Payload, Mapping[str, Any]]],
        *,
        window: int = 256,
        timeout: float | None = None,
    ) -> list[PubAck]:
        """Publish ``(subject, message)`` pairs with up to ``window`` awaiting their PubAck at once, and
        return every PubAck in order. A third element ``{"delay": ...}`` or ``{"at": ...}`` delays that
        message as :meth:`publish` does.

        Every message is checked before the first is sent. Each gets a fresh msg id and ``timeout`` (default
        ``publish_timeout``) to be acknowledged. If any failed, :class:`PublishBatchError` says which, with
        the PubAcks of the others.
        """
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise InvalidArgumentError(f"window must be a positive integer, got {window!r}")
        total = self._deadline(timeout)
        self._require()
        outgoing = [self._prepare_item(item) for item in messages]
        watches = [self._observer.publishing(out) for out in outgoing] if self._observer is not None else []
        try:
            for out in outgoing if watches else ():
                self._check_traced_size(out)
            results = await self._backend.store_many(outgoing, window, total)
        except JetStreamError as error:
            for watch in watches:
                watch.done(None, error)
            raise
        except BaseException as error:
            mapped = self._translate(error) if isinstance(error, Exception) else error
            for watch in watches:
                watch.done(None, mapped)
            if mapped is error:
                raise
            raise mapped from error
        for watch, result in zip(watches, results, strict=False):  # no watches on the plain path
            if isinstance(result, PubAck):
                watch.done(result, None)
            else:
                watch.done(None, result)
        acks: list[PubAck | None] = []
        errors: dict[int, BaseException] = {}
        for index, result in enumerate(results):
            if isinstance(result, PubAck):
                acks.append(result)
                continue
            acks.append(None)
            if isinstance(result, TimeoutError) and not isinstance(result, JetStreamError):
                out = outgoing[index]
                errors[index] = PublishTimeoutError(out.subject, total, out.headers[MSG_ID_HEADER])
            elif isinstance(result, JetStreamError):
                errors[index] = result
            else:
                mapped = self._translate(result)
                mapped.__cause__ = result
                errors[index] = mapped
        if errors:
            raise PublishBatchError(acks, errors)
        return [ack for ack in acks if ack is not None]

    async def publish_batch(
        self, messages: Iterable[BatchItem], *, batch_id: str | None = None, timeout: float | None = None
    ) -> list[PubAck]:
        """Store ``(subject, message)`` pairs as one atomic batch: all of them or none, and every PubAck in
        order (see :mod:`~jetstream_fastapi.core.batches`). A third element ``{"expected_...": ...}`` makes
        a message conditional; if one fails, nothing is stored. Retried with the same ``batch_id`` after a
        timeout, a batch already stored raises :class:`BatchStoredError` instead of being stored twice.
        """
        total = self._deadline(timeout)
        batch = batch_id_of(batch_id)
        items = batch_items(messages)
        self._require()
        check_server_version(["atomic batch publish"], self._backend.server_version)
        outgoing: list[Outgoing] = []
        for index, (subject, message, conditions) in enumerate(items, 1):
            out = self._prepare(subject, message, f"{batch}-{index}", None)
            out.conditions = conditions
            outgoing.append(out)
        streams = {
            subject: await self._below(self._backend.stream_for(subject)) for subject in {o.subject for o in outgoing}
        }
        return await self._below(self._backend.store_batch(one_stream(streams), batch, outgoing, total))

    def _prepare_item(self, item: tuple[str, Payload] | tuple[str, Payload, Mapping[str, Any]]) -> Outgoing:
        """One ``publish_many`` item, with its delay if it has one."""
        subject, message, options = item if len(item) == 3 else (*item, None)
        conditions = None if options is None else item_conditions(options)
        outgoing = self._prepare(subject, message, None, None)
        if conditions is not None:
            check_server_version(conditions.features, self._backend.server_version)
            outgoing.conditions = conditions
        return outgoing

    @property
    def reconnects(self) -> int:
        """Times the connection was re-established after a loss."""
        return self._backend.reconnects

    def __repr__(self) -> str:
        state = "disconnected" if not self._opened else ("connected" if self.is_connected else "reconnecting")
        return f"{type(self).__name__}(state={state!r}, subscriptions={len(self._subscriptions)})"
