"""The seam under the broker: what a backend does, in one interface small enough to read in one sitting.

:class:`~jetstream_fastapi.core.broker.BaseBroker` (the front) does everything a caller sees: it checks
every argument, holds the one set of defaults, gives each message its msg id, checks its size against
:attr:`Backend.max_payload`, decides the fate of each handled message (ack, nak with a delay, dead
letter), keeps the subscriptions, waits for idleness and turns every failure into the library's own
errors. A backend only stores and delivers:

* :meth:`Backend.store` one message (retrying what is transient within the deadline) and return its
  :class:`~jetstream_fastapi.driver.PubAck`, or :meth:`Backend.store_many` with a window in flight;
* :meth:`Backend.stream_for` a subject (provisioning one when allowed), the dead-letter stream and a
  key-ordered queue's partitioned stream;
* :meth:`Backend.consume`: run a consumer that hands each message to the front's ``process`` and settles
  it as the returned :class:`~jetstream_fastapi.core.handling.Verdict` says;
* :meth:`Backend.read` and :meth:`Backend.delete` stored messages (dead-letter admin);
* :meth:`Backend.kv_get` and :meth:`Backend.kv_create` keys of a Key-Value bucket (the Key-Value inbox);
* :meth:`Backend.open_inbox`, :meth:`Backend.reply` and :meth:`Backend.captures`: the core (not stored)
  messages of request/reply, and whether a reply address is a stream's;
* report its limits and health, and :meth:`Backend.translate` the errors of the layer below.

Two backends ship: :class:`~jetstream_fastapi.backends.jetstream.backend.JetStreamBackend` (a NATS server, through
nats-py) and :class:`~jetstream_fastapi.backends.memory.backend.MemoryBackend` (this process's memory, for tests).
The test double sits behind the same interface as the real thing, so tests run the front's real code.
Imports nothing from ``nats``.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..clock import Clock
from ..core.handling import ConsumerSettings, Verdict
from ..core.publish_options import PublishConditions
from ..driver import ConsumerState, Message, PubAck
from ..errors import JetStreamError

__all__ = [
    "Backend",
    "Consumer",
    "ConsumerSpec",
    "ConsumerState",  # the contract's (driver), imported from here before
    "OnReply",
    "Outgoing",
    "PartitionedStream",
    "Process",
    "Stored",
    "StreamFacts",
]


@dataclass(slots=True)  # not frozen: built once per publish, and a frozen __init__ is slower
class Outgoing:
    """One message ready to store: checked by the front, with its final headers (msg id included)."""

    subject: str
    body: bytes
    headers: dict[str, str]
    conditions: PublishConditions | None = None
    """A TTL and expectations (checked by the front); each backend gives them their meaning."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A message read back from a stream."""

    stream: str
    seq: int
    subject: str
    body: bytes
    headers: dict[str, str]
    time: _dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class PartitionedStream:
    """A stream whose only input is ``subject`` of stream ``source``, each subject prefixed with its
    partition of ``partitions`` (see :mod:`~jetstream_fastapi.core.key_order`); work-queue retention."""

    name: str
    source: str
    subject: str
    partitions: int
    from_now: bool = False
    """Source only what ``source`` stores from the stream's creation on (else from its first message)."""


@dataclass(frozen=True, slots=True)
class StreamFacts:
    """What the front needs to know of a stream to keep recurring schedules in it, and its duplicate window."""

    name: str
    subjects: tuple[str, ...]
    allow_msg_schedules: bool
    allow_msg_ttl: bool
    source: tuple[str, str] | None = None
    """For a key-ordered queue's partitioned stream: the stream it sources and the subject filter it
    sources (what stores a message it gets); ``None`` for any other stream."""
    duplicate_window: float = 120.0
    """Seconds a ``Nats-Msg-Id`` is remembered (from its first sighting, not sliding)."""


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """What the front asks of a consumer: which stream and subject, its name, settings and durability."""

    stream: str
    name: str
    """The durable name (the queue), or a generated name for an ephemeral consumer."""
    subject: str
    settings: ConsumerSettings
    durable: bool
    store_max_deliver: int = -1
    """The store's own limit on deliveries of a message (``-1``: none). The front lifts it while it
    dead-letters, and enforces ``settings.max_deliver`` itself (see :mod:`~jetstream_fastapi.core.processing`)."""
    exclusive: bool = False
    """At most one member handles messages at a time (see :mod:`~jetstream_fastapi.core.exclusive`)."""
    sourced: PartitionedStream | None = None
    """The partitioned stream it consumes (key order): idle only once its source has caught up too."""


OnReply = Callable[[str, Message], None]
"""Called with the token (the last subject token) and the message of each reply an inbox receives."""

Process = Callable[[Message], Awaitable[Verdict]]
"""The front's part of handling one message: run the handler and decide its fate. Never raises but
``CancelledError`` (then the backend gives the message back at once)."""


class Consumer(Protocol):
    """A running consumer of a backend."""

    @property
    def state(self) -> str:
        """``"new"``, ``"running"``, ``"stopping"`` or ``"stopped"``."""
        ...

    @property
    def in_flight(self) -> int:
        """Messages being processed now."""
        ...

    @property
    def last_error(self) -> str | None:
        """The last problem met (a refused pull, a failed recreate), or ``None``."""
        ...

    @property
    def active(self) -> bool | None:
        """For an exclusive consumer, whether this member is the one handling messages; ``None`` otherwise."""
        ...

    @property
    def counters(self) -> Counter[str]:
        """How often each of the backend's rare paths was taken (failed acks, recreated consumers, ...)."""
        ...

    async def idle(self) -> bool:
        """Whether every message stored for this consumer so far has been settled: nothing left to
        deliver, nothing delivered and unsettled, nothing processing."""
        ...

    async def stop(self, timeout: float) -> None:
        """Stop taking messages at once, let those processing finish within ``timeout``, give back the rest
        (cancelling what is still running after it). An ephemeral consumer is removed."""
        ...


class Backend(Protocol):
    """What stores and delivers messages for :class:`~jetstream_fastapi.core.broker.BaseBroker`."""

    name: str
    """A short name for ``repr`` and logs (``"jetstream"``, ``"memory"``)."""

    clock: Clock
    """The clock of the backend's timers (real time for a server; a test's clock in memory)."""

    @property
    def is_connected(self) -> bool:
        """Whether the backend can store and deliver right now (False while reconnecting)."""
        ...

    @property
    def max_payload(self) -> int:
        """The largest message, headers included, the backend accepts (known once open)."""
        ...

    @property
    def max_control_line(self) -> int:
        """The longest protocol line the store reads (subject, reply subject and sizes): a longer one would
        cost the connection, so the front refuses it first."""
        ...

    @property
    def inbox_prefix(self) -> str:
        """The prefix of the inboxes :meth:`open_inbox` makes: request replies go under it, and only there."""
        ...

    @property
    def reconnects(self) -> int:
        """Times the connection was re-established after a loss (for metrics)."""
        ...

    @property
    def server_version(self) -> tuple[int, int, int] | None:
        """The connected server's version, for the feature checks (``None``: unknown or not a server)."""
        ...

    async def open(self) -> None:
        """Connect, check that the store answers, and create or reconcile the declared streams."""
        ...

    async def close(self, timeout: float) -> None:
        """Flush what was sent and close, within ``timeout`` seconds; never raises for a server gone."""
        ...

    async def ping(self, timeout: float) -> bool:
        """Whether the store answers a cheap request within ``timeout`` seconds; never raises."""
        ...

    async def stream_for(self, subject: str) -> str:
        """The stream capturing ``subject`` (a filter may hold wildcards), provisioned when allowed;
        :class:`~jetstream_fastapi.errors.NoStreamError` otherwise."""
        ...

    async def has_stream(self, name: str) -> bool:
        """Whether stream ``name`` exists (never provisions one)."""
        ...

    async def ensure_dead_letter_stream(self) -> None:
        """Create the dead-letter stream if it is missing."""
        ...

    async def ensure_partitioned_stream(self, wanted: PartitionedStream) -> PartitionedStream:
        """Create the stream ``wanted`` if missing; what the existing one is made of otherwise (the
        front compares them)."""
        ...

    async def store(self, message: Outgoing, timeout: float) -> PubAck:
        """Store one message and return its PubAck, retrying transient failures within ``timeout``."""
        ...

    async def store_many(self, messages: Sequence[Outgoing], window: int, timeout: float) -> list[PubAck | Exception]:
        """Store ``messages`` with up to ``window`` awaiting their PubAck; by index, a PubAck or the error."""
        ...

    async def store_batch(
        self, stream: str, batch_id: str, messages: Sequence[Outgoing], timeout: float
    ) -> list[PubAck]:
        """Store ``messages`` (all captured by ``stream``) as one atomic batch: every PubAck, or an error and
        nothing stored (:class:`~jetstream_fastapi.errors.BatchStoredError` if it was stored before)."""
        ...

    async def consume(self, spec: ConsumerSpec, process: Process) -> Consumer:
        """Create or update the consumer and start delivering its messages to ``process``."""
        ...

    async def pause(self, stream: str, name: str, until: _dt.datetime | None) -> None:
        """Pause consumer ``name`` of ``stream`` until ``until`` (UTC), or resume it (``None``);
        :class:`~jetstream_fastapi.errors.ConsumerConfigError` if there is no such consumer."""
        ...

    async def consumer_state(self, stream: str, name: str) -> ConsumerState | None:
        """The consumer's state on the store; ``None`` if there is no such consumer."""
        ...

    async def read(self, stream: str, seq: int, *, subject: str | None = None, next: bool = False) -> Stored | None:
        """Message ``seq`` of ``stream`` (with ``next``: the first at or after ``seq`` matching ``subject``);
        ``None`` if there is none (or no such stream)."""
        ...

    async def delete(self, stream: str, seq: int) -> bool:
        """Delete message ``seq`` of ``stream``; False if there was none."""
        ...

    async def open_inbox(self, on_reply: OnReply) -> str:
        """Start listening on a fresh inbox and return its prefix: a message sent to ``<prefix>.<token>``
        (with :meth:`reply`) reaches ``on_reply(token, message)`` for as long as the connection lives."""
        ...

    async def reply(self, address: str, message: Outgoing) -> None:
        """Send ``message`` (its body and headers) to ``address`` at most once, not stored (core NATS); raises
        when it cannot be sent at all. Nobody listening is no error."""
        ...

    async def captures(self, subject: str) -> bool:
        """Whether a stream captures ``subject`` or, when it holds wildcards, any subject it matches (a reply
        sent there would be stored)."""
        ...

    async def read_last(self, stream: str, subject: str) -> Stored | None:
        """The last message of ``stream`` on the literal ``subject``; ``None`` if there is none."""
        ...

    async def stream_facts(self, stream: str) -> StreamFacts:
        """The subjects and the schedule flag of ``stream`` (which exists)."""
        ...

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        """The value of ``key`` in the Key-Value ``bucket`` (created if missing); ``None`` if it has none
        (never written, or expired)."""
        ...

    async def kv_create(self, bucket: str, key: str, value: bytes, ttl: float) -> bool:
        """Write ``key`` in ``bucket`` (created if missing) unless it has a value, to expire after ``ttl``
        seconds: the first writer wins. Whether this call wrote it."""
        ...

    def translate(self, error: Exception) -> JetStreamError | None:
        """The library's error for an exception of the layer below (``None``: not one of its exceptions)."""
        ...

    def describe(self, error: BaseException) -> str:
        """``error`` as one line of text with any secret removed, for logs."""
        ...
