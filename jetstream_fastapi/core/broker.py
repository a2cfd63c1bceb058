"""The broker's front: everything a caller sees, written once over a :class:`~jetstream_fastapi.backends.base.Backend`.

:class:`~jetstream_fastapi.JetStreamBroker` and :class:`~jetstream_fastapi.InMemoryBroker` are this class
with a backend each; so a test on memory runs the very code that runs in production, and the two cannot
drift. Here, and only here: argument checks and the one set of defaults, msg ids, the size check (headers
included), ``publish_many`` results, the dead-letter policy, the subscription registry, idleness, and the
mapping of every failure below into the library's errors (nothing from ``nats`` reaches a caller; the
original stays as ``__cause__``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Iterable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, Unpack, overload

from ..backends.base import Backend, ConsumerSpec, Outgoing
from ..driver import MSG_ID_HEADER, ConsumerOptions, Handler, Message, Payload, PubAck
from ..errors import (
    InvalidArgumentError,
    JetStreamError,
    NotConnectedError,
    PayloadTooLargeError,
    PublishBatchError,
    PublishConflictError,
    PublishTimeoutError,
)
from ..observability.hooks import observer
from ..observability.logs import message_extra
from .batches import BatchItem, batch_id_of, batch_items, one_stream
from .deadletters import (
    dead_letter_headers,
    dead_letter_msg_id,
    dead_letter_subject,
)
from .exclusive import check_exclusive
from .handling import Verdict, check_handler, check_one_filter
from .keyorder import check_key_order, subscribe_partitioned
from .operations import Operations
from .options import FrontSettings
from .partitioned import PartitionedSubscription
from .payloads import headers_size
from .preparing import Preparer, deadline
from .processing import Processor, ProcessorFactory, store_max_deliver
from .publish_options import check_server_version, item_conditions, publish_conditions, stored_before
from .requests import Replier, Requester, check_request, request_timeout
from .scheduling import Scheduling
from .subjects import check_queue, check_subject
from .subscription import Subscription

logger = logging.getLogger("jetstream_fastapi")

_NOT_CONNECTED = "the broker is not connected: call `await broker.connect()` first"
T = TypeVar("T")


class BaseBroker(Scheduling, Operations):
    """Publishes with PubAck and runs consumers, over a backend (see the module docstring)."""

    def __init__(self, backend: Backend, settings: FrontSettings) -> None:
        self._backend = backend
        self._settings = settings
        self.defaults = self._settings.consumer
        """The consumer settings every ``subscribe`` starts from (the broker's consumer options)."""
        self._opened = False
        self._lock = asyncio.Lock()
        self._subscriptions: set[Subscription] = set()
        self._settled = asyncio.Event()
        self._preparer = Preparer()
        self._requests = Requester(backend, self._send)
        self._replier = Replier(backend)
        # Spans and metrics (None: nothing to record, the plain path); see jetstream_fastapi.observability.
        self._observer = observer(settings.tracing, settings.metrics)
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

    @property
    def shutdown_timeout(self) -> float:
        """Seconds running handlers get to finish on ``unsubscribe``/``disconnect``."""
        return self._settings.shutdown_timeout

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

    def _require(self) -> None:
        if not self._opened:
            raise NotConnectedError(_NOT_CONNECTED)

    def _translate(self, error: Exception) -> JetStreamError:
        """The library's error for ``error`` (raised from below); the caller raises it ``from error``."""
        mapped = self._backend.translate(error)
        if mapped is not None:
            return mapped
        return JetStreamError(
            f"unexpected failure in the {self._backend.name} backend: {self._backend.describe(error)}"
        )

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
        to ``subject`` at that time (see :mod:`~jetstream_fastapi.core.schedules`); the PubAck is the
        stored schedule's.
        """
        if not self._opened:
            raise NotConnectedError(_NOT_CONNECTED)
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

    async def _store(self, outgoing: Outgoing, total: float) -> PubAck:
        try:
            return await self._backend.store(outgoing, total)
        except PublishConflictError as conflict:
            ack = await stored_before(self._backend, conflict, outgoing)
            if ack is None:
                raise
            return ack
        except JetStreamError:
            raise
        except Exception as error:
            raise self._translate(error) from error

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

    def _deadline(self, timeout: float | None) -> float:
        return deadline(timeout, self._settings.publish_timeout)

    def _prepare(self, subject: str, message: Payload, msg_id: str | None, headers: dict[str, str] | None) -> Outgoing:
        """Check and encode one message, giving it a msg id; raises before anything is sent."""
        return self._preparer.prepare(subject, message, msg_id, headers, self._backend.max_payload)

    # -- subscribe ---------------------------------------------------------------------------------

    @overload
    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        exclusive: bool = False,
        key_order: Literal[False] = False,
        partitions: None = None,
        **options: Unpack[ConsumerOptions],
    ) -> Subscription: ...

    @overload
    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        exclusive: bool = False,
        key_order: Literal[True],
        partitions: int | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> PartitionedSubscription: ...

    @overload
    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        exclusive: bool = False,
        key_order: bool = False,
        partitions: int | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> Subscription | PartitionedSubscription: ...

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        exclusive: bool = False,
        key_order: bool = False,
        partitions: int | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> Subscription | PartitionedSubscription:
        """Start a consumer running ``handler`` for each message on ``subject``.

        With ``queue``, a durable consumer of that name is shared by every instance using it (load
        balancing; it resumes where it stopped). Without, each call gets an ephemeral consumer that sees
        every new message; it is deleted on ``unsubscribe`` (or by the server after inactivity).
        With ``exclusive=True`` (needs ``queue``), one instance of the queue handles messages at a time and
        the others stand by (see :mod:`~jetstream_fastapi.core.exclusive`). With ``key_order=True`` (needs
        ``queue``), the messages of one key (the subject's ``*`` tokens) are handled one at a time in stream
        order across every instance, over ``partitions`` partitions (see :mod:`~jetstream_fastapi.core.keyorder`).
        """
        check_subject(subject, wildcards=True)
        if queue is not None:
            check_queue(queue)
        check_exclusive(exclusive, queue)
        count = check_key_order(key_order, partitions, queue, subject, options)
        if count and exclusive:
            raise InvalidArgumentError("key_order=True and exclusive=True do not go together")
        check_handler(handler)
        settings = self.defaults.merged(options)
        self._require()
        if count:
            assert queue is not None
            return await self._below(subscribe_partitioned(self, subject, handler, queue, count, dict(options)))
        stream = await self._below(self._backend.stream_for(subject))
        if queue is not None:
            running = ((sub.stream, sub.queue, sub.subject) for sub in self._subscriptions)
            check_one_filter(queue, subject, stream, running)
        name = queue or f"ephemeral-{uuid.uuid4().hex[:16]}"
        spec = ConsumerSpec(stream, name, subject, settings, queue is not None, store_max_deliver(settings), exclusive)
        return await self._below(self._consume(spec, handler, queue, subject))

    async def _consume(
        self,
        spec: ConsumerSpec,
        handler: Handler,
        queue: str | None,
        watched: str,
        kind: ProcessorFactory = Processor,
    ) -> Subscription:
        """Start the consumer ``spec`` with a ``kind`` of processor running ``handler``; its spans and metrics
        name ``watched`` (the subject the handler sees) and ``queue``."""
        if spec.settings.dead_letter:
            await self._backend.ensure_dead_letter_stream()
        watch = self._observer.consumer(watched, queue) if self._observer is not None else None
        processor = kind(handler, spec.settings, self._store_dead_letter, self._settled.set, watch, self._replier)
        consumer = await self._backend.consume(spec, processor)
        subscription = Subscription(self, spec, spec.name if spec.durable else None, consumer, processor)
        self._subscriptions.add(subscription)
        logger.info("consuming %s from stream %s as %s", spec.subject, spec.stream, spec.name)
        return subscription

    @property
    def reconnects(self) -> int:
        """Times the connection was re-established after a loss."""
        return self._backend.reconnects

    @property
    def subscriptions(self) -> list[Subscription]:
        """The running subscriptions."""
        return list(self._subscriptions)

    # -- dead letters ------------------------------------------------------------------------------

    async def _store_dead_letter(self, message: Message, verdict: Verdict) -> bool:
        """Store a message about to be terminated in the dead-letter stream; False if that failed (the
        :class:`~jetstream_fastapi.core.processing.Processor` then holds the message and tries again)."""
        delivery = message.delivery
        assert delivery is not None
        letter = Message(body=message.body, headers=dead_letter_headers(message, verdict.error))
        try:
            await self.publish(
                dead_letter_subject(delivery.stream, delivery.consumer),
                letter,
                msg_id=dead_letter_msg_id(delivery.stream, delivery.sequence, delivery.consumer),
            )
        except JetStreamError as error:
            logger.error(  # noqa: TRY400 - a traceback could carry secrets; describe() redacts
                "could not dead-letter %s#%d (%s); it is held and retried: %s",
                delivery.stream,
                delivery.sequence,
                message.subject,
                self._backend.describe(error),
                extra=message_extra(message),
            )
            return False
        return True

    async def _below(self, call: Awaitable[T]) -> T:
        """Await a call into the backend, turning a failure below into the library's error."""
        try:
            return await call
        except JetStreamError:
            raise
        except Exception as error:
            raise self._translate(error) from error

    # -- waiting -----------------------------------------------------------------------------------

    async def wait_until_idle(self, timeout: float = 10.0) -> None:
        """Return once every subscription's consumer has nothing pending, nothing unacked and no handler
        running (for tests: await "everything published was handled"); ``TimeoutError`` after ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                self._settled.clear()
                if await self._idle():
                    return
                # Handlers signal each settled message; the short bound covers redeliveries a server has
                # scheduled (nak delays) that no local event announces.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled.wait(), 0.1)

    async def _idle(self) -> bool:
        self._require()
        subscriptions = list(self._subscriptions)
        if any(sub.in_flight for sub in subscriptions):
            return False
        try:
            for sub in subscriptions:
                if not await sub.consumer.idle():
                    return False
        except JetStreamError:
            raise
        except Exception as error:
            raise self._translate(error) from error
        return True

    def __repr__(self) -> str:
        state = "disconnected" if not self._opened else ("connected" if self.is_connected else "reconnecting")
        return f"{type(self).__name__}(state={state!r}, subscriptions={len(self._subscriptions)})"
