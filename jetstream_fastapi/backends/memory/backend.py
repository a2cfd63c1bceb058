"""The memory backend: what :class:`~jetstream_fastapi.InMemoryBroker` (:mod:`.broker`, the very same broker
front as :class:`~jetstream_fastapi.JetStreamBroker`'s) stores and delivers, without a server, for tests.

Argument checks, msg ids, size checks, the dead-letter policy and the fate of each message are the
front's code, the same for both brokers. What this backend keeps in memory follows what a JetStream
server does: streams with increasing sequences, ``msg_id`` dedupe within a duplicate window, durable
queues (one member per message, resumed after resubscribing), ephemeral consumers (every subscriber sees
every new message), fan-out across queues, nak → redelivery after its delay with a rising attempt
number, ``max_deliver``, wildcards.

It also models what a test needs to see and a real server shows only with effort: ack-wait expiry
(an unanswered message comes back with the next attempt; a long handler keeps its message with
in-progress, as the JetStream worker does), ``max_ack_pending`` across members, all on a clock a test can
advance without sleeping (``clock=ManualClock()``, :mod:`~jetstream_fastapi.clock`); and fault injection
(``broker.faults``, :mod:`~jetstream_fastapi.backends.memory.faults`): redeliver an acked message, fail publishes, lose
acks, drop and restore the connection. This module is the adapter: the streams are the fake server's
(:mod:`~jetstream_fastapi.backends.memory.server`), the consumers live in
:mod:`~jetstream_fastapi.backends.memory.consumers`.
Imports nothing from ``nats``.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from collections.abc import Sequence

from ...clock import Clock, MonotonicClock
from ...core.options import StreamPolicy
from ...core.subjects import (
    DEFAULT_INBOX_PREFIX,
    DEFAULT_MAX_CONTROL_LINE,
    check_inbox_prefix,
    subject_matches,
    subjects_overlap,
)
from ...driver import MSG_ID_HEADER, Message, PubAck
from ...errors import (
    ConsumerConfigError,
    InvalidArgumentError,
    JetStreamError,
    NotConnectedError,
    PublishTimeoutError,
    StreamNotFoundError,
)
from ..base import ConsumerSpec, ConsumerState, OnReply, Outgoing, PartitionedStream, Process, Stored, StreamFacts
from .consumers import MemoryConsumer, MemoryMember
from .faults import Faults
from .publish_options import check_conditions, expire_later, schedule, store_batch
from .recurring import hold, is_recurring
from .server import MemoryServer

DEFAULT_MAX_PAYLOAD = 1024 * 1024
"""nats-server's default ``max_payload``, the memory backend's too."""


class MemoryBackend:
    """Streams and consumers in this process's memory, behind the :class:`~jetstream_fastapi.backends.base.Backend`
    interface."""

    name = "memory"

    def __init__(
        self,
        streams: StreamPolicy,
        *,
        duplicate_window: float = 120.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
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
        self._max_payload = max_payload
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.consumers: dict[tuple[str, str], MemoryConsumer] = {}
        self.server = MemoryServer(streams, self.clock, duplicate_window, self.consumers)
        self.faults = Faults(self.consumers, self.clock)
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
        return self.server.stream_for(subject).name

    async def has_stream(self, name: str) -> bool:
        self._require()
        return name in self.server.streams

    async def ensure_dead_letter_stream(self) -> None:
        self.server.ensure_dead_letter_stream()

    async def ensure_partitioned_stream(self, wanted: PartitionedStream) -> PartitionedStream:
        self._require()
        return self.server.ensure_partitioned_stream(wanted)

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
        stream = self.server.stream_for(message.subject)
        msg_id = message.headers[MSG_ID_HEADER]
        conditions = message.conditions
        if conditions is not None:
            check_conditions(stream, message.subject, conditions)  # before the duplicate window, as the server
        now = self.clock.now()
        seen = stream.dedupe.get(msg_id)
        if seen is not None and now - seen[1] < self.server.duplicate_window:
            return PubAck(stream=stream.name, seq=seen[0], duplicate=True)
        if conditions is not None and conditions.delay is not None:
            stored = schedule(self.server, stream, message, conditions.delay)  # kept aside, delivered at its time
        elif is_recurring(message.headers):
            stored = hold(self.server, stream, message)  # kept, its copy delivered at every tick
        else:
            stored = self.server.append(stream, message.subject, message.body, message.headers)
        stream.dedupe[msg_id] = (stored.seq, now)
        if conditions is not None and conditions.ttl is not None:
            expire_later(self.server, stream, stored, conditions.ttl)
        return PubAck(stream=stream.name, seq=stored.seq)

    async def store_batch(
        self, stream: str, batch_id: str, messages: Sequence[Outgoing], timeout: float
    ) -> list[PubAck]:
        self._require()
        if self.faults.connection_dropped:  # the commit's answer would not come back in time
            raise PublishTimeoutError(messages[-1].subject, timeout, batch_id)
        return store_batch(self.server, self.server.streams[stream], batch_id, messages)

    # -- consuming ---------------------------------------------------------------------------------

    async def consume(self, spec: ConsumerSpec, process: Process) -> MemoryMember:
        self._require()
        stream = self.server.streams[spec.stream]
        consumer = self.consumers.get((spec.stream, spec.name))
        if consumer is None:
            consumer = MemoryConsumer(
                self.clock, self.faults, stream, spec.name, spec.subject, spec.settings, durable=spec.durable
            )
            consumer.max_deliver = spec.store_max_deliver
            self.consumers[(spec.stream, spec.name)] = consumer
        else:
            consumer.filter, consumer.settings = spec.subject, spec.settings  # reconciled, as on the server
            consumer.max_deliver = spec.store_max_deliver
        consumer.exclusive = spec.exclusive
        member = MemoryMember(self.consumers, consumer, process, spec.settings)
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
        return any(subjects_overlap(subject, captured) for s in self.server.streams.values() for captured in s.subjects)

    # -- stored messages ---------------------------------------------------------------------------

    async def read(self, stream: str, seq: int, *, subject: str | None = None, next: bool = False) -> Stored | None:
        self._require()
        found = self.server.streams.get(stream)
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
        found = self.server.streams.get(stream)
        if found is None or not 1 <= seq <= len(found.messages) or seq in found.deleted:
            return False
        if found.max_age is not None or found.max_bytes is not None:
            self.server.discard(found, found.messages[seq - 1])  # its bytes no longer count against the limit
        else:
            found.deleted.add(seq)
        return True

    async def read_last(self, stream: str, subject: str) -> Stored | None:
        self._require()
        found = self.server.streams.get(stream)
        if found is None:
            return None
        for message in reversed(found.messages):
            if message.subject == subject and message.seq not in found.deleted:
                return await self.read(stream, message.seq)
        return None

    async def stream_facts(self, stream: str) -> StreamFacts:
        self._require()
        found = self.server.streams.get(stream)
        if found is None:
            raise StreamNotFoundError(stream)
        source = (found.sourced.source, found.sourced.subject) if found.sourced is not None else None
        return StreamFacts(
            found.name,
            tuple(found.subjects),
            found.allow_msg_schedules,
            found.allow_msg_ttl,
            source=source,
            duplicate_window=self.server.duplicate_window,
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
