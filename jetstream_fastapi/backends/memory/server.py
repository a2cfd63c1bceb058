"""The memory backend's fake server: streams in this process's memory, and what a JetStream server does
with a message stored in one (limits, delivery to the consumers on its subject, sourcing into a key-ordered
queue's partitioned stream).

:class:`MemoryServer` is the bottom of the memory backend. The consumers (:mod:`.consumers`), the features
a publish may ask for (:mod:`.publish_options`, :mod:`.recurring`) and the network between the broker and
this server (:mod:`.faults`) build on it, and :class:`~jetstream_fastapi.backends.memory.backend.MemoryBackend`
is the adapter over all of them behind the :class:`~jetstream_fastapi.backends.base.Backend` interface. It
knows the consumers only as :class:`ServerConsumer`. Imports nothing from ``nats``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ...clock import Clock
from ...core.key_order import STREAM_SOURCE, key_of, partition_of, partition_transform
from ...core.options import StreamPolicy
from ...core.payloads import headers_size
from ...core.subjects import stream_to_provision, subject_matches, subjects_overlap
from ...driver import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM
from ...errors import ConsumerConfigError, InvalidArgumentError, NoStreamError
from ..base import PartitionedStream


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
    max_age: float | None = None  # seconds a message is kept (the dead-letter stream's limits, as on a server)
    max_bytes: int | None = None  # most bytes kept: past it the oldest messages are discarded
    size: int = 0  # bytes of the messages kept, counted where a limit applies
    first: int = 0  # where the oldest message kept may be in `messages` (the discard of old ones starts there)


def stored_size(stored: StoredMessage) -> int:
    """The bytes a message takes in a stream, as a server's file store counts them against ``max_bytes``:
    subject, header block and body, and a 30-byte record overhead."""
    headers = headers_size(stored.headers) if stored.headers else 0
    return 30 + len(stored.subject) + headers + len(stored.body)


class ServerConsumer(Protocol):
    """What the server sees of a consumer: its stream, its filter, the messages it has not delivered yet."""

    stream: MemoryStream
    filter: str
    waiting: deque[StoredMessage]

    def enqueue(self, stored: StoredMessage) -> None:
        """A new message on the consumer's filter."""
        ...


class MemoryServer:
    """The streams, and what storing a message in one does (see the module docstring)."""

    def __init__(
        self,
        streams: StreamPolicy,
        clock: Clock,
        duplicate_window: float,
        consumers: Mapping[tuple[str, str], ServerConsumer],
    ) -> None:
        self._policy = streams
        self.streams: dict[str, MemoryStream] = {DEAD_LETTER_STREAM: self._dead_letter_stream()}
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
        self.clock = clock
        self.consumers = consumers  # (stream, name) -> consumer; the adapter adds and removes them
        self._sourcing: dict[str, list[MemoryStream]] = {}  # stream name -> the partitioned streams sourcing it

    def ensure_dead_letter_stream(self) -> None:
        """The dead-letter stream, recreated if it was deleted (by a test), as on a server."""
        if DEAD_LETTER_STREAM not in self.streams:
            self.streams[DEAD_LETTER_STREAM] = self._dead_letter_stream()

    def _dead_letter_stream(self) -> MemoryStream:
        """The dead-letter stream with the limits a server's has: ``dead_letter_max_age`` seconds of the
        backend's clock, ``dead_letter_max_bytes`` (the oldest discarded past it)."""
        policy = self._policy
        return MemoryStream(
            DEAD_LETTER_STREAM,
            [f"{DEAD_LETTER_PREFIX}.>"],
            max_age=policy.dead_letter_max_age,
            max_bytes=policy.dead_letter_max_bytes,
        )

    def ensure_partitioned_stream(self, wanted: PartitionedStream) -> PartitionedStream:
        """The partitioned stream ``wanted``, created (and filled from its source) if missing."""
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

    def append(
        self, stream: MemoryStream, subject: str, body: bytes, headers: dict[str, str], *, deliver: bool = True
    ) -> StoredMessage:
        """Store a message at the end of ``stream`` and (with ``deliver``) hand it to the consumers on its subject."""
        stored = StoredMessage(len(stream.messages) + 1, subject, body, headers, time.time_ns())
        stream.messages.append(stored)
        if stream.max_age is not None or stream.max_bytes is not None:
            self._limit(stream, stored)
        if deliver:
            self.deliver(stream, stored)
        return stored

    def _limit(self, stream: MemoryStream, stored: StoredMessage) -> None:
        """Apply ``stream``'s limits to a message just stored: it goes after ``max_age`` seconds of the
        backend's clock, and older messages go (oldest first) while the stream holds over ``max_bytes``;
        the newest stays, as on a server with the discard-old policy."""
        stream.size += stored_size(stored)
        if stream.max_age is not None:
            self.clock.call_later(stream.max_age, lambda: self.discard(stream, stored))
        if stream.max_bytes is None:
            return
        while stream.size > stream.max_bytes and stream.first < len(stream.messages) - 1:
            self.discard(stream, stream.messages[stream.first])
            stream.first += 1

    def discard(self, stream: MemoryStream, stored: StoredMessage) -> None:
        """Remove ``stored`` from a stream with limits (past its age, or its room), if still there."""
        if stored.seq in stream.deleted:
            return
        stream.deleted.add(stored.seq)
        stream.size -= stored_size(stored)
        for consumer in self.consumers.values():
            if consumer.stream is stream and stored in consumer.waiting:
                consumer.waiting.remove(stored)

    def deliver(self, stream: MemoryStream, stored: StoredMessage) -> None:
        """Hand a stored message to the consumers of ``stream`` on its subject."""
        for consumer in self.consumers.values():
            if consumer.stream is stream and subject_matches(consumer.filter, stored.subject):
                consumer.enqueue(stored)
        for derived in self._sourcing.get(stream.name, ()):
            self._source(derived, stream, stored)

    def stream_for(self, subject: str) -> MemoryStream:
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
