"""``JetStreamBroker``: the :class:`~jetstream_fastapi.driver.Broker` contract on a real NATS server (nats-py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Unpack

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig
from nats.js.manager import JetStreamManager

from .connection import Connection, redact_url
from .consumers import consumer_config, ensure_consumer
from .consuming import ConsumerSettings, DeliverPolicy, Verdict, check_handler, check_one_filter
from .dead_letter_stream import DEAD_LETTER_CONFIG, get_dead_letter, list_dead_letters
from .deadletters import (
    DEAD_LETTER_STREAM,
    DeadLetter,
    dead_letter_headers,
    dead_letter_msg_id,
    dead_letter_subject,
)
from .driver import Backoff, ConsumerOptions, Handler, Message, Payload, PubAck
from .errors import (
    ConnectError,
    InvalidArgumentError,
    JetStreamError,
    NotConnectedError,
)
from .idle import consumer_idle
from .publisher import Publisher
from .streams import StreamMismatch, StreamRegistry
from .subjects import check_queue, check_subject
from .worker import PullWorker, WorkerState

logger = logging.getLogger("jetstream_fastapi")

# The JetStream API's account-info request: the cheapest question the server answers (see ping()).
_ACCOUNT_INFO = "$JS.API.INFO"


class JetStreamBroker:
    """Publishes with PubAck and consumes with pull workers on a NATS JetStream server.

    ``connect()``/``disconnect()`` are explicit and idempotent (or use ``async with``); consumer options
    given here are the defaults of every ``subscribe`` (see the README's option table). Any other keyword
    (``user_credentials``, ``tls``, ``token``, ``user``, ``password``, ``nkeys_seed``, ...) goes to
    ``nats.connect`` unchanged; secrets never appear in logs, ``repr`` or errors::

        broker = JetStreamBroker("nats://localhost:4222", batch_size=10, fetch_wait=5.0)
        async with broker:
            ack = await broker.publish("orders.created", b"{}")
    """

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://localhost:4222",
        *,
        batch_size: int = 10,
        fetch_wait: float = 5.0,
        concurrency: int | None = None,
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        max_ack_pending: int = 1000,
        backoff: Backoff | None = None,
        dead_letters: bool = True,
        deliver_policy: DeliverPolicy | None = None,
        inactive_threshold: float = 300.0,
        handler_timeout: float | None = None,
        streams: Iterable[StreamConfig] = (),
        auto_provision: bool = True,
        stream_mismatch: StreamMismatch = "error",
        connect_timeout: float = 5.0,
        publish_timeout: float = 5.0,
        shutdown_timeout: float = 10.0,
        **connect_options: Any,
    ) -> None:
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        if not self.servers:
            raise InvalidArgumentError("servers must name at least one NATS URL")
        self.defaults = ConsumerSettings(
            batch_size=batch_size,
            fetch_wait=fetch_wait,
            concurrency=concurrency if concurrency is not None else batch_size,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max(max_ack_pending, concurrency or batch_size),
            backoff=backoff or Backoff(),
            dead_letter=dead_letters,
            deliver_policy=deliver_policy,
            inactive_threshold=inactive_threshold,
            handler_timeout=handler_timeout,
        )
        self.streams = list(streams)
        for config in self.streams:
            if not isinstance(config, StreamConfig) or not config.name or not config.subjects:
                raise InvalidArgumentError(f"streams must be StreamConfig objects with a name and subjects: {config!r}")
        if stream_mismatch not in ("error", "warn", "update"):
            raise InvalidArgumentError(f"stream_mismatch must be 'error', 'warn' or 'update', not {stream_mismatch!r}")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("publish_timeout", publish_timeout),
            ("shutdown_timeout", shutdown_timeout),
        ):
            if value <= 0:
                raise InvalidArgumentError(f"{name} must be positive, got {value!r}")
        self.auto_provision = auto_provision
        self.stream_mismatch: StreamMismatch = stream_mismatch
        self.publish_timeout = publish_timeout
        self.shutdown_timeout = shutdown_timeout
        self._connection = Connection(
            self.servers,
            connect_timeout=connect_timeout,
            options=connect_options,
            on_disconnected=self._connection_lost,
            on_reconnected=self._connection_restored,
        )
        self._nc: NATS | None = None
        self._jsm: JetStreamManager | None = None
        self._registry: StreamRegistry | None = None
        self._subscriptions: set[JetStreamSubscription] = set()
        self._lock = asyncio.Lock()
        self._publisher: Publisher | None = None
        self._settled = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """Whether the connection is up right now (False while reconnecting)."""
        return self._nc is not None and self._nc.is_connected

    async def ping(self, timeout: float = 1.0) -> bool:
        """Whether JetStream answers right now: one account-info request, waiting ``timeout`` seconds at most.

        False (never an exception) before ``connect``, while reconnecting, after ``disconnect``, when the
        request times out or finds no responders, and when the server answers with an error (JetStream
        disabled for the account). For readiness probes: see :func:`~jetstream_fastapi.health_router`.
        """
        if timeout <= 0:
            raise InvalidArgumentError(f"timeout must be positive, got {timeout!r}")
        nc = self._nc
        if nc is None or not nc.is_connected:
            return False
        try:
            reply = await nc.request(_ACCOUNT_INFO, b"", timeout=timeout)
            response = json.loads(reply.data)
        except (nats.errors.Error, TimeoutError, ValueError):  # no answer, no responders, closed, not JSON
            return False
        return isinstance(response, dict) and "error" not in response

    async def connect(self) -> None:
        """Connect, check that JetStream answers, and create or reconcile the declared streams."""
        async with self._lock:
            if self._nc is not None:
                return
            nc = await self._connection.open()
            try:
                jsm = nc.jsm(timeout=self._connection.connect_timeout)
                try:
                    await jsm.account_info()
                except Exception as error:
                    raise ConnectError(
                        f"connected, but JetStream does not answer: {self._connection.describe(error)} "
                        "(is the server started with -js?)"
                    ) from None
                registry = StreamRegistry(
                    jsm, declared=self.streams, auto_provision=self.auto_provision, on_mismatch=self.stream_mismatch
                )
                await registry.declare_all()
                publisher = Publisher(nc, registry, timeout=self.publish_timeout)
                await publisher.start()
            except BaseException:
                await nc.close()
                raise
            self._nc, self._jsm, self._registry = nc, jsm, registry
            self._publisher = publisher

    async def disconnect(self) -> None:
        """Stop every subscription (see :meth:`JetStreamSubscription.unsubscribe`), then drain and close."""
        async with self._lock:
            nc = self._nc
            if nc is None:
                return
            await asyncio.gather(*(sub.unsubscribe() for sub in list(self._subscriptions)))
            self._nc = self._jsm = self._registry = self._publisher = None
            self._connection.closing = True
            try:
                # Flushes the acks and naks written by the workers; bounded in case the server is gone.
                await asyncio.wait_for(nc.drain(), timeout=max(1.0, min(5.0, self.shutdown_timeout)))
            except (TimeoutError, nats.errors.Error, OSError):
                # Reconnecting (server gone): drain refuses, and close() may raise on the dead socket.
                with contextlib.suppress(nats.errors.Error, OSError):
                    await nc.close()

    async def __aenter__(self) -> JetStreamBroker:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.disconnect()

    def _connection_lost(self) -> None:
        for sub in self._subscriptions:
            sub.worker.connection_lost()

    def _connection_restored(self) -> None:
        for sub in self._subscriptions:
            sub.worker.connection_restored()

    def _require(self) -> tuple[NATS, JetStreamManager, StreamRegistry]:
        if self._nc is None or self._jsm is None or self._registry is None:
            raise NotConnectedError("the broker is not connected: call `await broker.connect()` first")
        return self._nc, self._jsm, self._registry

    # -- publish -----------------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        message: Payload,
        *,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> PubAck:
        """Store ``message`` on ``subject`` and return the server's :class:`PubAck`.

        ``msg_id`` (the ``Nats-Msg-Id`` header) defaults to a fresh unique id, so that this method's own
        retries of a transient failure are stored once. ``timeout`` (default ``publish_timeout``) is the
        total deadline across retries; past it :class:`PublishTimeoutError` is raised, and the message
        may still have been stored: retry with the same ``msg_id``.
        """
        publisher = self._publisher
        if publisher is None:
            raise NotConnectedError("the broker is not connected: call `await broker.connect()` first")
        return await publisher.publish(subject, message, msg_id, headers, timeout)

    async def publish_many(
        self, messages: Iterable[tuple[str, Payload]], *, window: int = 256, timeout: float | None = None
    ) -> list[PubAck]:
        """Publish ``(subject, message)`` pairs with up to ``window`` awaiting their PubAck at once, and
        return every PubAck in order.

        Every message is checked before the first is sent. Each gets a fresh msg id and ``timeout`` (default
        ``publish_timeout``) to be acknowledged; a message no stream answered goes through :meth:`publish`
        (which finds or provisions its stream). If any failed, :class:`PublishBatchError` says which, with
        the PubAcks of the others.
        """
        publisher = self._publisher
        if publisher is None:
            raise NotConnectedError("the broker is not connected: call `await broker.connect()` first")
        return await publisher.publish_many(messages, window, timeout)

    # -- subscribe ---------------------------------------------------------------------------------

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> JetStreamSubscription:
        """Start a pull worker running ``handler`` for each message on ``subject``.

        With ``queue``, a durable consumer of that name is shared by every instance using it (load
        balancing; it resumes where it stopped). Without, each call gets an ephemeral consumer that sees
        every new message; it is deleted on ``unsubscribe`` (or by the server after inactivity).
        """
        check_subject(subject, wildcards=True)
        if queue is not None:
            check_queue(queue)
        check_handler(handler)
        settings = self.defaults.merged(options)
        nc, jsm, registry = self._require()
        stream = await registry.stream_for(subject)
        if queue is not None:
            running = ((sub.worker.stream, sub.queue, sub.subject) for sub in self._subscriptions)
            check_one_filter(queue, subject, stream, running)
        name = queue or f"ephemeral-{uuid.uuid4().hex[:16]}"
        config = consumer_config(name, subject, settings, durable=queue is not None)
        if settings.dead_letter and settings.max_deliver != -1:
            # The worker counts attempts itself and dead-letters a message past max_deliver; the server must
            # not stop redelivering first, or a message whose dead letter could not be stored on its last
            # attempt (nak'd at shutdown while held) would never come back.
            config.max_deliver = -1
        if settings.dead_letter:
            await registry.ensure(DEAD_LETTER_CONFIG)

        async def ensure() -> None:
            await ensure_consumer(jsm, stream, config)

        await ensure()
        worker = PullWorker(
            nc,
            stream=stream,
            consumer=name,
            handler=handler,
            settings=settings,
            ensure_consumer=ensure,
            on_terminate=self._dead_letter if settings.dead_letter else None,
            on_settled=self._settled.set,
        )
        subscription = JetStreamSubscription(self, subject, queue, worker)
        self._subscriptions.add(subscription)
        try:
            await worker.start()
        except BaseException:
            self._subscriptions.discard(subscription)
            raise
        logger.info("consuming %s from stream %s as %s", subject, stream, name)
        return subscription

    # -- dead letters ------------------------------------------------------------------------------

    async def _dead_letter(self, message: Message, verdict: Verdict) -> bool:
        """Store a message that is about to be terminated in the dead-letter stream; False if that failed."""
        delivery = message.delivery
        assert delivery is not None
        letter = Message(body=message.body, headers=dead_letter_headers(message, verdict.error))
        try:
            await self.publish(
                dead_letter_subject(delivery.stream, delivery.consumer),
                letter,
                msg_id=dead_letter_msg_id(delivery.stream, delivery.sequence, delivery.consumer),
            )
        except (JetStreamError, nats.errors.Error) as error:  # refused, timed out, not connected
            logger.error(  # noqa: TRY400 - a traceback could carry secrets; describe() redacts
                "could not dead-letter %s#%d (%s); it is kept and retried: %s",
                delivery.stream,
                delivery.sequence,
                message.subject,
                self._connection.describe(error),
            )
            return False
        return True

    async def list_dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` messages in the dead-letter stream, with why they died."""
        _, jsm, _ = self._require()
        return await list_dead_letters(jsm, limit)

    async def replay_dead_letter(self, seq: int) -> PubAck:
        """Publish dead letter ``seq`` again to its original subject (its original headers, a fresh
        ``msg_id``), then delete it from the dead-letter stream. ``LookupError`` if there is none."""
        _, jsm, _ = self._require()
        letter = await get_dead_letter(jsm, seq)
        replay = letter.replay()
        ack = await self.publish(letter.subject, replay, msg_id=replay.msg_id)
        await jsm.delete_msg(DEAD_LETTER_STREAM, seq)
        return ack

    async def wait_until_idle(self, timeout: float = 10.0) -> None:
        """Return once every subscription's consumer has nothing pending, nothing unacked and no handler
        running (for tests: await "everything published was handled"); ``TimeoutError`` after ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                self._settled.clear()
                if await self._idle():
                    return
                # Handlers signal each settled message; the short bound covers redeliveries the server
                # has scheduled (nak delays) that no local event announces.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled.wait(), 0.1)

    async def _idle(self) -> bool:
        nc, jsm, _ = self._require()
        subscriptions = list(self._subscriptions)
        if any(sub.worker.in_flight for sub in subscriptions):
            return False
        await nc.flush()  # the server has processed every ack sent so far
        for sub in subscriptions:
            if not await consumer_idle(jsm, sub.worker.stream, sub.worker.consumer, sub.subject):
                return False
        return True

    @property
    def subscriptions(self) -> list[JetStreamSubscription]:
        """The running subscriptions."""
        return list(self._subscriptions)

    def __repr__(self) -> str:
        state = "connected" if self.is_connected else ("reconnecting" if self._nc is not None else "disconnected")
        servers = [redact_url(url) for url in self.servers]
        return f"JetStreamBroker(servers={servers!r}, state={state!r}, subscriptions={len(self._subscriptions)})"


class JetStreamSubscription:
    """A running pull worker; ``unsubscribe()`` stops it (durable consumers stay on the server)."""

    def __init__(self, broker: JetStreamBroker, subject: str, queue: str | None, worker: PullWorker) -> None:
        self._broker = broker
        self._subject = subject
        self._queue = queue
        self.worker = worker

    @property
    def subject(self) -> str:
        """The subject (or wildcard filter) it consumes."""
        return self._subject

    @property
    def queue(self) -> str | None:
        """The durable consumer's name, or ``None`` for an ephemeral consumer."""
        return self._queue

    @property
    def running(self) -> bool:
        """Whether the worker is pulling."""
        return self.worker.state is WorkerState.RUNNING

    @property
    def state(self) -> str:
        """The worker's state: ``"new"``, ``"running"``, ``"stopping"`` or ``"stopped"`` (for health probes)."""
        return self.worker.state.value

    @property
    def in_flight(self) -> int:
        """Handlers of this subscription running now."""
        return self.worker.in_flight

    @property
    def last_error(self) -> str | None:
        """The last problem the worker met (a refused pull, a failed recreate), or ``None``."""
        return self.worker.last_error

    @property
    def counters(self) -> dict[str, int]:
        """How often the worker took each rare path (see :attr:`PullWorker.counters`), for metrics."""
        return dict(self.worker.counters)

    async def unsubscribe(self) -> None:
        """Stop pulling at once, let running handlers finish within the broker's ``shutdown_timeout``,
        give back (nak) messages that were pulled but not started. An ephemeral consumer is deleted."""
        await self.worker.stop(self._broker.shutdown_timeout)
        self._broker._subscriptions.discard(self)
        jsm = self._broker._jsm
        if self._queue is None and jsm is not None:
            try:
                await jsm.delete_consumer(self.worker.stream, self.worker.consumer)
            except (nats.errors.Error, TimeoutError) as error:
                # The server deletes it anyway after inactive_threshold without a pull.
                self.worker.counters["ephemeral_delete_failed"] += 1
                logger.info("ephemeral consumer %s not deleted now: %r", self.worker.consumer, error)

    def __repr__(self) -> str:
        state = self.worker.state.value
        return f"JetStreamSubscription(subject={self._subject!r}, queue={self._queue!r}, state={state!r})"
