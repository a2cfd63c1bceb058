"""``InMemoryBroker``: the :class:`~jetstream_fastapi.driver.Broker` contract without a server, for tests.

It keeps the semantics tests depend on: streams with increasing sequences, ``msg_id`` dedupe within a
duplicate window, durable queues (one member per message, resumed after resubscribing), ephemeral
subscriptions (every subscriber sees every new message), fan-out across queues, nak → redelivery after
the backoff with a rising attempt number, ``max_deliver``, ``Retry``/``Reject``, wildcards, and
:meth:`InMemoryBroker.wait_until_idle` so a test can await "everything published was handled" without
sleeping. The fate of a message is decided by the same code as on a real server
(:func:`~jetstream_fastapi.consuming.run_handler`).

What it does not model: ack-wait expiry (a handler here never times out) and network faults.
Imports nothing from ``nats``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Unpack

from .consuming import Action, ConsumerSettings, DeliverPolicy, Verdict, check_handler, check_one_filter, run_handler
from .deadletters import (
    DEAD_LETTER_PREFIX,
    DEAD_LETTER_STREAM,
    DeadLetter,
    dead_letter_headers,
    dead_letter_msg_id,
    dead_letter_subject,
)
from .driver import MSG_ID_HEADER, Backoff, ConsumerOptions, Delivery, Handler, Message, Payload, PubAck
from .errors import (
    InvalidArgumentError,
    JetStreamError,
    NoStreamError,
    NotConnectedError,
    PayloadTooLargeError,
    PublishBatchError,
)
from .publishing import check_msg_id, coerce_message
from .subjects import check_queue, check_subject, provisioned_stream, subject_matches, subjects_overlap


class StreamDeclaration(Protocol):
    """Anything with a stream ``name`` and ``subjects``, such as nats-py's ``StreamConfig``."""

    name: str | None
    subjects: list[str] | None


@dataclass(slots=True)
class _Stored:
    seq: int
    subject: str
    body: bytes
    headers: dict[str, str]
    timestamp_ns: int


@dataclass(slots=True)
class _Stream:
    name: str
    subjects: list[str]
    messages: list[_Stored] = field(default_factory=list)
    dedupe: dict[str, tuple[int, float]] = field(default_factory=dict)  # msg id -> (seq, stored at)
    deleted: set[int] = field(default_factory=set)


class InMemoryBroker:
    """A broker in this process's memory, behind the same contract as :class:`JetStreamBroker`.

    Consumer options are the defaults of every ``subscribe``, as on the real broker. A rejected or
    exhausted message goes to the dead-letter stream, as on a real server (:meth:`list_dead_letters`,
    :meth:`replay_dead_letter`)::

        broker = InMemoryBroker(backoff=Backoff(initial=0.01))
        async with broker:
            await broker.subscribe("orders.created", handle, queue="order-processor")
            await broker.publish("orders.created", b"{}")
            await broker.wait_until_idle()
    """

    def __init__(
        self,
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
        streams: Iterable[StreamDeclaration] = (),
        auto_provision: bool = True,
        duplicate_window: float = 120.0,
        max_payload: int = 1024 * 1024,
        shutdown_timeout: float = 10.0,
    ) -> None:
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
        self._streams: dict[str, _Stream] = {
            DEAD_LETTER_STREAM: _Stream(DEAD_LETTER_STREAM, [f"{DEAD_LETTER_PREFIX}.>"])
        }
        for declared in streams:
            if not declared.name or not declared.subjects:
                raise InvalidArgumentError(f"a stream needs a name and subjects: {declared!r}")
            self._streams[declared.name] = _Stream(declared.name, list(declared.subjects))
        self.auto_provision = auto_provision
        self.duplicate_window = duplicate_window
        self.max_payload = max_payload
        self.shutdown_timeout = shutdown_timeout
        self._consumers: dict[tuple[str, str], _Consumer] = {}
        self._subscriptions: set[InMemorySubscription] = set()
        self._connected = False
        self._changed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """Whether ``connect()`` was called (and not undone by ``disconnect()``)."""
        return self._connected

    async def ping(self, timeout: float = 1.0) -> bool:
        """Whether the broker is connected (there is no server to ask); the readiness probe's question."""
        if timeout <= 0:
            raise InvalidArgumentError(f"timeout must be positive, got {timeout!r}")
        return self._connected

    async def connect(self) -> None:
        """Mark the broker connected (idempotent). Streams and durable consumers survive a reconnect."""
        self._connected = True

    async def disconnect(self) -> None:
        """Stop every subscription gracefully (idempotent)."""
        if not self._connected:
            return
        await asyncio.gather(*(sub.unsubscribe() for sub in list(self._subscriptions)))
        self._connected = False

    async def __aenter__(self) -> InMemoryBroker:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.disconnect()

    def _require(self) -> None:
        if not self._connected:
            raise NotConnectedError("the broker is not connected: call `await broker.connect()` first")

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
        """Store ``message`` and hand it to every consumer whose filter matches ``subject``."""
        self._require()
        check_subject(subject, wildcards=False)
        body, merged = coerce_message(message, headers)
        if len(body) > self.max_payload:
            raise PayloadTooLargeError(subject, len(body), self.max_payload)
        return self._store(subject, body, merged, check_msg_id(msg_id) if msg_id is not None else uuid.uuid4().hex)

    async def publish_many(
        self, messages: Iterable[tuple[str, Payload]], *, window: int = 256, timeout: float | None = None
    ) -> list[PubAck]:
        """Publish ``(subject, message)`` pairs in order and return every PubAck; as on the real broker,
        every message is checked first and :class:`PublishBatchError` reports the ones that failed."""
        if not isinstance(window, int) or window < 1:
            raise InvalidArgumentError(f"window must be a positive integer, got {window!r}")
        self._require()
        items = list(messages)
        for subject, message in items:
            check_subject(subject, wildcards=False)
            body, _ = coerce_message(message, None)
            if len(body) > self.max_payload:
                raise PayloadTooLargeError(subject, len(body), self.max_payload)
        acks: list[PubAck | None] = []
        errors: dict[int, BaseException] = {}
        for index, (subject, message) in enumerate(items):
            try:
                acks.append(await self.publish(subject, message))
            except JetStreamError as error:
                acks.append(None)
                errors[index] = error
        if errors:
            raise PublishBatchError(acks, errors)
        return [ack for ack in acks if ack is not None]

    def _store(self, subject: str, body: bytes, merged: dict[str, str], msg_id: str) -> PubAck:
        stream = self._stream_for(subject)
        merged[MSG_ID_HEADER] = msg_id
        now = time.monotonic()
        seen = stream.dedupe.get(msg_id)
        if seen is not None and now - seen[1] < self.duplicate_window:
            return PubAck(stream=stream.name, seq=seen[0], duplicate=True)
        stored = _Stored(len(stream.messages) + 1, subject, body, merged, time.time_ns())
        stream.messages.append(stored)
        stream.dedupe[msg_id] = (stored.seq, now)
        for consumer in self._consumers.values():
            if consumer.stream is stream and subject_matches(consumer.filter, subject):
                consumer.enqueue(stored, 1)
        return PubAck(stream=stream.name, seq=stored.seq)

    def _stream_for(self, subject: str) -> _Stream:
        """The stream capturing ``subject`` (for a wildcard filter: overlapping it), provisioned if allowed."""
        for stream in self._streams.values():
            if any(subjects_overlap(pattern, subject) for pattern in stream.subjects):
                return stream
        if not self.auto_provision:
            raise NoStreamError(subject, "declare a stream for it (streams=[...]) or enable auto_provision")
        plan = provisioned_stream(subject)
        if plan is None:
            raise NoStreamError(subject, "auto-provisioning needs a literal first token; declare a stream")
        name, subjects = plan
        if name in self._streams:
            raise NoStreamError(subject, f"auto-provisioning stream {name!r} failed: the name is in use")
        stream = self._streams[name] = _Stream(name, subjects)
        return stream

    # -- dead letters ------------------------------------------------------------------------------

    def _dead_letter(self, message: Message, verdict: Verdict, consumer: str) -> None:
        delivery = message.delivery
        assert delivery is not None
        self._store(
            dead_letter_subject(delivery.stream, consumer),
            message.body,
            dead_letter_headers(message, verdict.error),
            dead_letter_msg_id(delivery.stream, delivery.sequence, consumer),
        )

    async def list_dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters still in the dead-letter stream."""
        stream = self._streams[DEAD_LETTER_STREAM]
        return [
            DeadLetter.from_stored(
                m.seq, m.body, m.headers, _dt.datetime.fromtimestamp(m.timestamp_ns / 1e9, tz=_dt.UTC)
            )
            for m in stream.messages
            if m.seq not in stream.deleted
        ][:limit]

    async def replay_dead_letter(self, seq: int) -> PubAck:
        """Publish dead letter ``seq`` again to its original subject, then remove it from the dead letters."""
        stream = self._streams[DEAD_LETTER_STREAM]
        if not 1 <= seq <= len(stream.messages) or seq in stream.deleted:
            raise LookupError(f"no dead letter with sequence {seq}")
        letter = DeadLetter.from_stored(seq, stream.messages[seq - 1].body, stream.messages[seq - 1].headers)
        replay = letter.replay()
        ack = await self.publish(letter.subject, replay, msg_id=replay.msg_id)
        stream.deleted.add(seq)
        return ack

    # -- subscribe ---------------------------------------------------------------------------------

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> InMemorySubscription:
        """Run ``handler`` for each message on ``subject``; ``queue`` shares a durable consumer."""
        check_subject(subject, wildcards=True)
        if queue is not None:
            check_queue(queue)
        check_handler(handler)
        settings = self.defaults.merged(options)
        self._require()
        stream = self._stream_for(subject)
        if queue is not None:
            running = ((sub._consumer.stream.name, sub.queue, sub.subject) for sub in self._subscriptions)
            check_one_filter(queue, subject, stream.name, running)
        name = queue or f"ephemeral-{uuid.uuid4().hex[:16]}"
        consumer = self._consumers.get((stream.name, name))
        if consumer is None:
            consumer = _Consumer(self, stream, name, subject, settings, durable=queue is not None)
            self._consumers[(stream.name, name)] = consumer
        else:
            consumer.filter, consumer.settings = subject, settings  # reconciled, as on the server
        subscription = InMemorySubscription(self, consumer, subject, queue, handler, settings)
        self._subscriptions.add(subscription)
        consumer.members.append(subscription)
        consumer.dispatch()
        return subscription

    @property
    def subscriptions(self) -> list[InMemorySubscription]:
        """The running subscriptions."""
        return list(self._subscriptions)

    # -- waiting -----------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()

    def idle(self) -> bool:
        """Whether nothing is running, nothing is scheduled for redelivery, and no subscribed consumer
        has messages waiting."""
        return all(consumer.idle() for consumer in self._consumers.values())

    async def wait_until_idle(self, timeout: float = 10.0) -> None:
        """Return once every published message has been handled to its end (acked, or terminated after
        its retries); raise ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not self.idle():
                self._changed.clear()
                await self._changed.wait()

    def __repr__(self) -> str:
        streams = {name: len(stream.messages) for name, stream in self._streams.items()}
        return (
            f"InMemoryBroker(connected={self._connected}, streams={streams}, subscriptions={len(self._subscriptions)})"
        )


@dataclass(slots=True)
class _Pending:
    stored: _Stored
    attempt: int


class _Consumer:
    """One consumer's state: what waits, what runs, what is scheduled; survives its subscribers if durable."""

    def __init__(
        self,
        broker: InMemoryBroker,
        stream: _Stream,
        name: str,
        filter: str,
        settings: ConsumerSettings,
        *,
        durable: bool,
    ) -> None:
        self.broker = broker
        self.stream = stream
        self.name = name
        self.filter = filter
        self.settings = settings
        self.durable = durable
        self.members: list[InMemorySubscription] = []
        self.waiting: deque[_Pending] = deque()
        self.scheduled = 0
        self.in_flight = 0
        self._next_member = 0
        policy = settings.deliver_policy or ("all" if durable else "new")
        backlog = [m for m in stream.messages if subject_matches(filter, m.subject)]
        for stored in backlog[-1:] if policy == "last" else backlog if policy == "all" else []:
            self.waiting.append(_Pending(stored, 1))

    def enqueue(self, stored: _Stored, attempt: int) -> None:
        self.waiting.append(_Pending(stored, attempt))
        self.dispatch()

    def dispatch(self) -> None:
        while self.waiting and self.in_flight < self.settings.max_ack_pending:
            member = self._free_member()
            if member is None:
                break
            pending = self.waiting.popleft()
            self.in_flight += 1
            member.start(pending)
        self.broker._notify()

    def _free_member(self) -> InMemorySubscription | None:
        count = len(self.members)
        for offset in range(count):
            member = self.members[(self._next_member + offset) % count]
            if member.has_room():
                self._next_member = (self._next_member + offset + 1) % count
                return member
        return None

    def settle(self, pending: _Pending, verdict: Verdict, message: Message) -> None:
        self.in_flight -= 1
        if verdict.action is Action.NAK:
            self.scheduled += 1
            asyncio.get_running_loop().call_later(verdict.delay, self._redeliver, pending)
        elif verdict.action is Action.TERM and self.settings.dead_letter:
            self.broker._dead_letter(message, verdict, self.name)
        self.dispatch()

    def give_back(self, pending: _Pending) -> None:
        """A pulled message that will not run here: redeliver it now, counting the attempt."""
        self.in_flight -= 1
        self.waiting.appendleft(_Pending(pending.stored, pending.attempt + 1))
        self.dispatch()

    def _redeliver(self, pending: _Pending) -> None:
        self.scheduled -= 1
        self.enqueue(pending.stored, pending.attempt + 1)

    def idle(self) -> bool:
        return self.in_flight == 0 and self.scheduled == 0 and (not self.waiting or not self.members)


class InMemorySubscription:
    """A subscriber of an in-memory consumer; ``unsubscribe()`` stops it gracefully."""

    def __init__(
        self,
        broker: InMemoryBroker,
        consumer: _Consumer,
        subject: str,
        queue: str | None,
        handler: Handler,
        settings: ConsumerSettings,
    ) -> None:
        self._broker = broker
        self._consumer = consumer
        self._subject = subject
        self._queue = queue
        self._handler = handler
        self._settings = settings
        self._tasks: dict[asyncio.Task[None], _Pending] = {}
        self.running = True

    @property
    def subject(self) -> str:
        """The subject (or wildcard filter) it consumes."""
        return self._subject

    @property
    def queue(self) -> str | None:
        """The durable consumer's name, or ``None``."""
        return self._queue

    @property
    def state(self) -> str:
        """``"running"`` until ``unsubscribe()``, then ``"stopped"`` (as a real subscription's, for health probes)."""
        return "running" if self.running else "stopped"

    @property
    def in_flight(self) -> int:
        """Handlers of this subscription running now."""
        return len(self._tasks)

    @property
    def last_error(self) -> str | None:
        """Always ``None``: there is no network to fail (handler errors are the message's fate, not the worker's)."""
        return None

    def has_room(self) -> bool:
        return self.running and len(self._tasks) < self._settings.concurrency

    def start(self, pending: _Pending) -> None:
        task = asyncio.get_running_loop().create_task(self._run(pending))
        self._tasks[task] = pending

    async def _run(self, pending: _Pending) -> None:
        stored, consumer = pending.stored, self._consumer
        delivery = Delivery(consumer.stream.name, stored.seq, pending.attempt, stored.timestamp_ns, consumer.name)
        message = Message(body=stored.body, headers=dict(stored.headers), subject=stored.subject, delivery=delivery)
        try:
            verdict = await run_handler(self._handler, message, self._settings)
        except asyncio.CancelledError:
            self._tasks.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            consumer.give_back(pending)
            raise
        self._tasks.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
        consumer.settle(pending, verdict, message)

    async def unsubscribe(self) -> None:
        """Stop taking messages, let running handlers finish within the broker's ``shutdown_timeout``,
        give back the rest. A durable consumer keeps its place; an ephemeral one is removed."""
        if not self.running:
            return
        self.running = False
        consumer = self._consumer
        consumer.members.remove(self)
        self._broker._subscriptions.discard(self)
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=self._broker.shutdown_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if not consumer.durable and not consumer.members:
            self._broker._consumers.pop((consumer.stream.name, consumer.name), None)
        consumer.dispatch()

    def __repr__(self) -> str:
        return f"InMemorySubscription(subject={self._subject!r}, queue={self._queue!r}, running={self.running})"
