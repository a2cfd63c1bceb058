"""The memory backend, and :class:`InMemoryBroker`: the very same broker front, without a server, for tests.

The front (:class:`~jetstream_fastapi.core.broker.BaseBroker`) is the one :class:`JetStreamBroker` runs:
argument checks, msg ids, size checks, the dead-letter policy and the fate of each message are the same
code. What this backend keeps in memory follows what a JetStream server does: streams with increasing
sequences, ``msg_id`` dedupe within a duplicate window, durable queues (one member per message, resumed
after resubscribing), ephemeral consumers (every subscriber sees every new message), fan-out across
queues, nak → redelivery after its delay with a rising attempt number, ``max_deliver``, wildcards.

It also models what a test needs to see and a real server shows only with effort: ack-wait expiry
(an unanswered message comes back with the next attempt; a long handler keeps its message with
in-progress, as the JetStream worker does), ``max_ack_pending`` across members, all on a clock a test can
advance without sleeping (``clock=ManualClock()``, :mod:`~jetstream_fastapi.clock`); and fault injection
(``broker.faults``, :mod:`~jetstream_fastapi.faults`): redeliver an acked message, fail publishes, lose
acks, drop and restore the connection. The consumers live in :mod:`~jetstream_fastapi.memory_consumer`.
Imports nothing from ``nats``.
"""

from __future__ import annotations

import datetime as _dt
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Unpack

from ...clock import Clock, MonotonicClock
from ...core.broker import BaseBroker
from ...core.deadletters import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM
from ...core.keyorder import STREAM_SOURCE, key_of, partition_of, partition_transform
from ...core.options import BrokerOptions, FrontSettings, StreamPolicy
from ...core.subjects import (
    DEFAULT_INBOX_PREFIX,
    DEFAULT_MAX_CONTROL_LINE,
    check_inbox_prefix,
    stream_to_provision,
    subject_matches,
    subjects_overlap,
)
from ...core.subscription import Subscription
from ...driver import MSG_ID_HEADER, Message, PubAck
from ...errors import (
    ConsumerConfigError,
    InvalidArgumentError,
    JetStreamError,
    NoStreamError,
    NotConnectedError,
    PublishTimeoutError,
    StreamNotFoundError,
)
from ..base import ConsumerSpec, ConsumerState, OnReply, Outgoing, PartitionedStream, Process, Stored, StreamFacts
from .conditions import check_conditions, expire_later, schedule, store_batch
from .consumers import MemoryConsumer, MemoryMember
from .faults import Faults
from .recurring import hold, is_recurring

_DEFAULT_MAX_PAYLOAD = 1024 * 1024


class InMemoryBroker(BaseBroker):
    """The broker front over memory: the same contract, options and errors as :class:`JetStreamBroker`.

    Besides the broker options: ``duplicate_window`` (seconds a ``msg_id`` is remembered, 120 as on a
    server), ``max_payload`` (bytes, headers included, 1 MiB as on a server), ``max_control_line`` (bytes of
    a protocol line, 4096 as on a server: bounds subjects), ``inbox_prefix`` (of request reply addresses,
    ``"_INBOX"`` as nats-py) and ``clock`` (default: real monotonic time) that drives every timer,
    ``server_version`` (a ``(major, minor, patch)`` to behave as, for testing the feature checks; default:
    every feature). ``faults`` injects network and server faults::

        broker = InMemoryBroker(backoff=Backoff(initial=0.01))
        async with broker:
            await broker.subscribe("orders.created", handle, queue="order-processor")
            await broker.publish("orders.created", b"{}")
            await broker.wait_until_idle()
    """

    def __init__(
        self,
        *,
        duplicate_window: float = 120.0,
        max_payload: int = _DEFAULT_MAX_PAYLOAD,
        max_control_line: int = DEFAULT_MAX_CONTROL_LINE,
        inbox_prefix: str = DEFAULT_INBOX_PREFIX,
        clock: Clock | None = None,
        server_version: tuple[int, int, int] | None = None,
        **options: Unpack[BrokerOptions],
    ) -> None:
        settings = FrontSettings.from_options(options, "InMemoryBroker()")
        backend = MemoryBackend(
            settings.streams,
            duplicate_window=duplicate_window,
            max_payload=max_payload,
            max_control_line=max_control_line,
            inbox_prefix=inbox_prefix,
            clock=clock,
            server_version=server_version,
        )
        super().__init__(backend, settings)
        self._memory = backend
        self.clock: Clock = backend.clock
        """The clock of every timer (nak delays, ack wait, in-progress, duplicate window)."""
        self.faults: Faults = backend.faults
        """Fault injection: see :class:`~jetstream_fastapi.faults.Faults`."""

    def idle(self) -> bool:
        """Whether nothing is running, nothing is waiting for redelivery, and no subscribed consumer has
        messages waiting (what :meth:`wait_until_idle` waits for)."""
        return self._memory.idle()

    def __repr__(self) -> str:
        state = "disconnected" if not self._opened else ("connected" if self.is_connected else "reconnecting")
        streams = {name: len(stream.messages) for name, stream in self._memory.streams.items()}
        return f"InMemoryBroker(state={state!r}, streams={streams}, subscriptions={len(self._subscriptions)})"


InMemorySubscription = Subscription
"""A subscription of an :class:`InMemoryBroker` (the one :class:`~jetstream_fastapi.core.broker.Subscription`)."""


@dataclass(slots=True)
class StoredMessage:
    """A message in a memory stream."""

    seq: int
    subject: str
    body: bytes
    headers: dict[str, str]
    timestamp_ns: int


@dataclass(slots=True)
class MemoryStream:
    """A stream: its messages in order, the msg ids it has seen, the sequences deleted."""

    name: str
    subjects: list[str]
    messages: list[StoredMessage] = field(default_factory=list)
    dedupe: dict[str, tuple[int, float]] = field(default_factory=dict)  # msg id -> (seq, stored at)
    deleted: set[int] = field(default_factory=set)
    schedules: set[int] = field(default_factory=set)  # delayed messages kept until due: never delivered
    allow_msg_ttl: bool = False
    allow_msg_schedules: bool = False
    allow_atomic: bool = False
    sourced: PartitionedStream | None = None  # a key-ordered queue's partitioned stream: what it sources


class MemoryBackend:
    """Streams and consumers in this process's memory, behind the :class:`~jetstream_fastapi.backends.base.Backend`
    interface."""

    name = "memory"

    def __init__(
        self,
        streams: StreamPolicy,
        *,
        duplicate_window: float = 120.0,
        max_payload: int = _DEFAULT_MAX_PAYLOAD,
        max_control_line: int = DEFAULT_MAX_CONTROL_LINE,
        inbox_prefix: str = DEFAULT_INBOX_PREFIX,
        clock: Clock | None = None,
        server_version: tuple[int, int, int] | None = None,
    ) -> None:
        if not isinstance(duplicate_window, int | float) or duplicate_window <= 0:
            raise InvalidArgumentError(f"duplicate_window must be positive, got {duplicate_window!r}")
        for option, limit in (("max_payload", max_payload), ("max_control_line", max_control_line)):
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise InvalidArgumentError(f"{option} must be a positive integer, got {limit!r}")
        self.inbox_prefix = check_inbox_prefix(inbox_prefix)
        self.max_control_line = max_control_line
        self.streams: dict[str, MemoryStream] = {
            DEAD_LETTER_STREAM: MemoryStream(DEAD_LETTER_STREAM, [f"{DEAD_LETTER_PREFIX}.>"])
        }
        for declared in streams.declared:
            name, subjects = getattr(declared, "name", None), getattr(declared, "subjects", None)
            if not name or not subjects:
                raise InvalidArgumentError(f"streams must have a name and subjects: {declared!r}")
            self.streams[name] = MemoryStream(
                name,
                list(subjects),
                allow_msg_ttl=bool(getattr(declared, "allow_msg_ttl", False)),
                allow_msg_schedules=bool(getattr(declared, "allow_msg_schedules", False)),
                allow_atomic=bool(getattr(declared, "allow_atomic", False)),
            )
        self.auto_provision = streams.auto_provision
        self.duplicate_window = duplicate_window
        self._max_payload = max_payload
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.faults = Faults(self)
        self.consumers: dict[tuple[str, str], MemoryConsumer] = {}
        self._sourcing: dict[str, list[MemoryStream]] = {}  # stream name -> the partitioned streams sourcing it
        self._inboxes: dict[str, OnReply] = {}  # request/reply: inbox prefix -> its listener
        self.buckets: dict[str, dict[str, tuple[bytes, float]]] = {}  # Key-Value: bucket -> key -> (value, expiry)
        self._open = False
        self.server_version = server_version
        """The nats-server version to behave as for the feature checks (``None``: every feature)."""

    # -- connection --------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._open and not self.faults.connection_dropped

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def reconnects(self) -> int:
        return self.faults.restored  # each faults.restore_connection() after a drop

    async def open(self) -> None:
        self._open = True

    async def close(self, timeout: float) -> None:
        self.faults._closed()
        self._inboxes.clear()
        self._open = False

    async def ping(self, timeout: float) -> bool:
        return self.is_connected

    # -- streams and publishing --------------------------------------------------------------------

    async def stream_for(self, subject: str) -> str:
        return self._stream_for(subject).name

    async def has_stream(self, name: str) -> bool:
        self._require()
        return name in self.streams

    async def ensure_dead_letter_stream(self) -> None:
        if DEAD_LETTER_STREAM not in self.streams:  # deleted by a test: recreated, as on a server
            self.streams[DEAD_LETTER_STREAM] = MemoryStream(DEAD_LETTER_STREAM, [f"{DEAD_LETTER_PREFIX}.>"])

    async def ensure_partitioned_stream(self, wanted: PartitionedStream) -> PartitionedStream:
        self._require()
        found = self.streams.get(wanted.name)
        if found is not None:
            if found.sourced is None:
                raise ConsumerConfigError(f"stream {wanted.name!r} exists and is not a partitioned stream")
            return found.sourced
        # No subjects of its own: only the source fills it (and no publish finds it).
        derived = self.streams[wanted.name] = MemoryStream(wanted.name, [], sourced=wanted)
        self._sourcing.setdefault(wanted.source, []).append(derived)
        source = self.streams[wanted.source]
        if not wanted.from_now:
            for stored in list(source.messages):
                if stored.seq not in source.deleted and stored.seq not in source.schedules:
                    self._source(derived, source, stored)
        return wanted

    def _source(self, derived: MemoryStream, source: MemoryStream, stored: StoredMessage) -> None:
        """Copy ``stored`` into the partitioned stream ``derived`` as the server's source with its subject
        transform would: the partition in front of the subject, where it came from in a header."""
        wanted = derived.sourced
        assert wanted is not None
        if not subject_matches(wanted.subject, stored.subject):
            return
        partition = partition_of(key_of(wanted.subject, stored.subject), wanted.partitions)
        dest = partition_transform(wanted.subject, wanted.partitions)
        origin = f"{source.name} {stored.seq} {wanted.subject} {dest} {stored.subject}"
        self.append(derived, f"{partition}.{stored.subject}", stored.body, {**stored.headers, STREAM_SOURCE: origin})

    async def store(self, message: Outgoing, timeout: float) -> PubAck:
        msg_id = message.headers[MSG_ID_HEADER]
        return await self.faults._publish(lambda: self._store(message), message.subject, msg_id, timeout)

    async def store_many(self, messages: Sequence[Outgoing], window: int, timeout: float) -> list[PubAck | Exception]:
        # One deadline for the batch, as on the real backend (while the connection is down, each waits).
        deadline = self.clock.now() + timeout
        results: list[PubAck | Exception] = []
        for message in messages:
            try:
                results.append(await self.store(message, max(0.0, deadline - self.clock.now())))
            except JetStreamError as error:
                results.append(error)
        return results

    def _store(self, message: Outgoing) -> PubAck:
        stream = self._stream_for(message.subject)
        msg_id = message.headers[MSG_ID_HEADER]
        conditions = message.conditions
        if conditions is not None:
            check_conditions(stream, message.subject, conditions)  # before the duplicate window, as the server
        now = self.clock.now()
        seen = stream.dedupe.get(msg_id)
        if seen is not None and now - seen[1] < self.duplicate_window:
            return PubAck(stream=stream.name, seq=seen[0], duplicate=True)
        if conditions is not None and conditions.delay is not None:
            stored = schedule(self, stream, message, conditions.delay)  # kept aside, delivered at its time
        elif is_recurring(message.headers):
            stored = hold(self, stream, message)  # kept, its copy delivered at every tick
        else:
            stored = self.append(stream, message.subject, message.body, message.headers)
        stream.dedupe[msg_id] = (stored.seq, now)
        if conditions is not None and conditions.ttl is not None:
            expire_later(self, stream, stored, conditions.ttl)
        return PubAck(stream=stream.name, seq=stored.seq)

    def append(
        self, stream: MemoryStream, subject: str, body: bytes, headers: dict[str, str], *, deliver: bool = True
    ) -> StoredMessage:
        """Store a message at the end of ``stream`` and (with ``deliver``) hand it to the consumers on its subject."""
        stored = StoredMessage(len(stream.messages) + 1, subject, body, headers, time.time_ns())
        stream.messages.append(stored)
        if deliver:
            self.deliver(stream, stored)
        return stored

    def deliver(self, stream: MemoryStream, stored: StoredMessage) -> None:
        """Hand a stored message to the consumers of ``stream`` on its subject."""
        for consumer in self.consumers.values():
            if consumer.stream is stream and subject_matches(consumer.filter, stored.subject):
                consumer.enqueue(stored)
        for derived in self._sourcing.get(stream.name, ()):
            self._source(derived, stream, stored)

    async def store_batch(
        self, stream: str, batch_id: str, messages: Sequence[Outgoing], timeout: float
    ) -> list[PubAck]:
        self._require()
        if self.faults.connection_dropped:  # the commit's answer would not come back in time
            raise PublishTimeoutError(messages[-1].subject, timeout, batch_id)
        return store_batch(self, self.streams[stream], batch_id, messages)

    def _stream_for(self, subject: str) -> MemoryStream:
        """The stream capturing ``subject`` (for a wildcard filter: overlapping it), provisioned if allowed."""
        for stream in self.streams.values():
            if any(subjects_overlap(pattern, subject) for pattern in stream.subjects):
                return stream
        name, subjects = stream_to_provision(subject, auto_provision=self.auto_provision)
        if name in self.streams:
            raise NoStreamError(subject, f"auto-provisioning stream {name!r} failed: the name is in use")
        # TTLs, schedules and batches allowed, as on a stream the JetStream backend auto-provisions.
        stream = self.streams[name] = MemoryStream(
            name, subjects, allow_msg_ttl=True, allow_msg_schedules=True, allow_atomic=True
        )
        return stream

    # -- consuming ---------------------------------------------------------------------------------

    async def consume(self, spec: ConsumerSpec, process: Process) -> MemoryMember:
        self._require()
        stream = self.streams[spec.stream]
        consumer = self.consumers.get((spec.stream, spec.name))
        if consumer is None:
            consumer = MemoryConsumer(self, stream, spec.name, spec.subject, spec.settings, durable=spec.durable)
            consumer.max_deliver = spec.store_max_deliver
            self.consumers[(spec.stream, spec.name)] = consumer
        else:
            consumer.filter, consumer.settings = spec.subject, spec.settings  # reconciled, as on the server
            consumer.max_deliver = spec.store_max_deliver
        consumer.exclusive = spec.exclusive
        member = MemoryMember(self, consumer, process, spec.settings)
        consumer.members.append(member)
        consumer.dispatch()
        return member

    def idle(self) -> bool:
        """Whether every consumer with members has settled everything so far."""
        return all(consumer.idle() for consumer in self.consumers.values())

    async def pause(self, stream: str, name: str, until: _dt.datetime | None) -> None:
        self._require()
        consumer = self.consumers.get((stream, name))
        if consumer is None:
            raise ConsumerConfigError(f"no consumer {name!r} on stream {stream!r} to pause or resume")
        consumer.pause(until)

    async def consumer_state(self, stream: str, name: str) -> ConsumerState | None:
        consumer = self.consumers.get((stream, name))
        return None if consumer is None else consumer.state()

    # -- request/reply -----------------------------------------------------------------------------

    async def open_inbox(self, on_reply: OnReply) -> str:
        self._require()
        prefix = f"{self.inbox_prefix}.{uuid.uuid4().hex}"
        self._inboxes[prefix] = on_reply
        return prefix

    async def reply(self, address: str, message: Outgoing) -> None:
        self._require()
        self.faults._reply(address)
        prefix, _, token = address.rpartition(".")
        reply = Message(body=message.body, headers=dict(message.headers), subject=address)

        def arrive() -> None:  # core NATS: nobody listening, nothing happens
            listener = self._inboxes.get(prefix)
            if listener is not None:
                listener(token, reply)

        self.faults._transmit(arrive, ack=False)  # held while the connection is dropped, as nats-py buffers

    async def captures(self, subject: str) -> bool:
        self._require()
        return any(subjects_overlap(subject, captured) for s in self.streams.values() for captured in s.subjects)

    # -- stored messages ---------------------------------------------------------------------------

    async def read(self, stream: str, seq: int, *, subject: str | None = None, next: bool = False) -> Stored | None:
        self._require()
        found = self.streams.get(stream)
        if found is None:
            return None
        for message in found.messages[max(0, seq - 1) :] if next else found.messages[seq - 1 : seq]:
            if message.seq in found.deleted or (subject is not None and not subject_matches(subject, message.subject)):
                continue
            if not next and message.seq != seq:
                return None
            timestamp = _dt.datetime.fromtimestamp(message.timestamp_ns / 1e9, tz=_dt.UTC)
            return Stored(stream, message.seq, message.subject, message.body, dict(message.headers), timestamp)
        return None

    async def delete(self, stream: str, seq: int) -> bool:
        self._require()
        found = self.streams.get(stream)
        if found is None or not 1 <= seq <= len(found.messages) or seq in found.deleted:
            return False
        found.deleted.add(seq)
        return True

    async def read_last(self, stream: str, subject: str) -> Stored | None:
        self._require()
        found = self.streams.get(stream)
        if found is None:
            return None
        for message in reversed(found.messages):
            if message.subject == subject and message.seq not in found.deleted:
                return await self.read(stream, message.seq)
        return None

    async def stream_facts(self, stream: str) -> StreamFacts:
        self._require()
        found = self.streams.get(stream)
        if found is None:
            raise StreamNotFoundError(stream)
        source = (found.sourced.source, found.sourced.subject) if found.sourced is not None else None
        return StreamFacts(
            found.name,
            tuple(found.subjects),
            found.allow_msg_schedules,
            found.allow_msg_ttl,
            source=source,
            duplicate_window=self.duplicate_window,
        )

    # -- Key-Value ---------------------------------------------------------------------------------

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        found = self._bucket(bucket).get(key)
        if found is None or found[1] <= self.clock.now():
            return None
        return found[0]

    async def kv_create(self, bucket: str, key: str, value: bytes, ttl: float) -> bool:
        keys = self._bucket(bucket)
        now = self.clock.now()
        found = keys.get(key)
        if found is not None and found[1] > now:
            return False
        keys[key] = (value, now + ttl)
        return True

    def _bucket(self, name: str) -> dict[str, tuple[bytes, float]]:
        self._require()
        if self.faults.connection_dropped:
            raise NotConnectedError("the NATS connection is down (faults.drop_connection)")
        return self.buckets.setdefault(name, {})  # an expired key counts as none, as past a message's TTL

    def _require(self) -> None:
        if not self._open:
            raise NotConnectedError("the broker is not connected: call `await broker.connect()` first")

    # -- errors ------------------------------------------------------------------------------------

    def translate(self, error: Exception) -> JetStreamError | None:
        return None  # nothing below this backend raises anything but the library's own errors

    def describe(self, error: BaseException) -> str:
        text = str(error).strip()
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
