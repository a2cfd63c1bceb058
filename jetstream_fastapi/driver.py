"""The contract: messages, the ``Broker`` and ``Subscriber`` protocols, and the handler's steering exceptions.

:class:`Broker` is what :func:`~jetstream_fastapi.get_broker` returns and both brokers are. Its data plane
is small (``connect``, ``disconnect``, ``publish``, ``subscribe``, ``request``, and their batch forms); the
management plane is on the same object, declared by the protocols it extends: :class:`ConsumerAdmin`
(consumer states, pause and resume), :class:`DeadLetterAdmin` and :class:`ScheduleAdmin` (recurring
schedules). So the FastAPI layer, the CLI and the admin page call them without probing.

Business code and its tests can depend on this module alone: it imports nothing from ``nats`` (directly or
through the modules it imports), so a handler written against :class:`Message` runs unchanged on
:class:`~jetstream_fastapi.JetStreamBroker`, on :class:`~jetstream_fastapi.InMemoryBroker`, or called
directly in a unit test::

    from jetstream_fastapi.driver import Message, Retry

    async def process(msg: Message) -> None:
        if not inventory_ready():
            raise Retry(after=30)        # nak: redeliver in 30 s
        handle(msg.body)                 # returning acks the message
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict, Unpack, runtime_checkable

from .errors import (
    ConnectError,
    ConsumerConfigError,
    InvalidArgumentError,
    InvalidHandlerError,
    InvalidQueueError,
    InvalidSubjectError,
    JetStreamError,
    NoStreamError,
    NotConnectedError,
    PayloadTooLargeError,
    PublishBatchError,
    PublishError,
    PublishTimeoutError,
    StreamConfigError,
)

__all__ = [
    "Ack",
    "Backoff",
    "Broker",
    "ConnectError",
    "ConsumerAdmin",
    "ConsumerConfigError",
    "ConsumerOptions",
    "ConsumerState",
    "DeadLetterAdmin",
    "Delivery",
    "Handler",
    "InvalidArgumentError",
    "InvalidHandlerError",
    "InvalidQueueError",
    "InvalidSubjectError",
    "JetStreamError",
    "JsonModel",
    "Message",
    "NoStreamError",
    "NotConnectedError",
    "Payload",
    "PayloadTooLargeError",
    "PubAck",
    "PublishBatchError",
    "PublishItem",
    "PublishError",
    "PublishTimeoutError",
    "Reject",
    "Retry",
    "ScheduleAdmin",
    "StreamConfigError",
    "Subscriber",
]

MSG_ID_HEADER = "Nats-Msg-Id"


@dataclass(slots=True)
class Delivery:
    """Where a received message came from and how often it was delivered.

    (Not frozen: a frozen dataclass's ``__init__`` costs about 0.4 µs more, paid on every message.)"""

    stream: str
    """Name of the stream that stores the message."""
    sequence: int
    """The message's sequence number in its stream."""
    attempt: int
    """Delivery attempt, starting at 1; a redelivery after a nak or an ack timeout increases it."""
    timestamp_ns: int
    """When the stream stored the message, nanoseconds since the Unix epoch."""
    consumer: str = ""
    """Name of the consumer that delivered it (the queue name for a durable consumer)."""

    @property
    def timestamp(self) -> _dt.datetime:
        """When the stream stored the message, as an aware UTC ``datetime``."""
        return _dt.datetime.fromtimestamp(self.timestamp_ns / 1e9, tz=_dt.UTC)


@dataclass(slots=True)
class Message:
    """A message to publish, or one handed to a handler.

    ``Message(body=b"...")`` is all a publisher needs; a received message also has its ``subject`` and
    its :class:`Delivery`.
    """

    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    subject: str = ""
    delivery: Delivery | None = None
    """Set on received messages only."""

    @property
    def msg_id(self) -> str | None:
        """The ``Nats-Msg-Id`` header: the id the server deduplicates publishes by."""
        return self.headers.get(MSG_ID_HEADER)

    @property
    def attempt(self) -> int:
        """Delivery attempt, starting at 1 (1 for a message that was not delivered by a broker)."""
        return self.delivery.attempt if self.delivery is not None else 1


@dataclass(frozen=True, slots=True)
class PubAck:
    """The server's acknowledgement of a stored message."""

    stream: str
    seq: int
    duplicate: bool = False
    """True when the ``msg_id`` was already stored within the duplicate window: ``seq`` is the original's."""


class JsonModel(Protocol):
    """Anything with pydantic's ``model_dump_json()``: published as JSON with a content-type header."""

    def model_dump_json(self) -> str:
        """The model as a JSON document."""
        ...


Payload = Message | bytes | str | JsonModel
"""What ``publish`` accepts: a :class:`Message`, raw bytes, text (UTF-8), or a pydantic model (JSON)."""

PublishItem = tuple[str, Payload] | tuple[str, Payload, Mapping[str, Any]]
"""One message of ``publish_many`` or ``publish_batch``: ``(subject, message)``, or with that message's
options (``{"delay": ...}``/``{"at": ...}`` for ``publish_many``, ``{"expected_...": ...}`` for a batch)."""

CONTENT_TYPE_HEADER = "Content-Type"
JSON_CONTENT_TYPE = "application/json"

Handler = Callable[[Message], Awaitable[object]]
"""A consumer handler: return to ack, raise to nak (redelivered later), or raise :class:`Retry`/:class:`Reject`.

What it returns answers a ``request()`` (a :data:`Payload`; ``None`` answers nothing) and is ignored otherwise."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before a failed message is redelivered: exponential with jitter, between ``initial`` and ``maximum``.

    Attempt *n* waits ``min(maximum, initial * multiplier ** (n - 1))``, spread by ``±jitter`` (a fraction).
    """

    initial: float = 1.0
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (0 <= self.initial <= self.maximum):
            raise InvalidArgumentError(f"backoff needs 0 <= initial <= maximum, got {self.initial}, {self.maximum}")
        if self.multiplier < 1:
            raise InvalidArgumentError(f"backoff multiplier must be >= 1, got {self.multiplier}")
        if not (0 <= self.jitter < 1):
            raise InvalidArgumentError(f"backoff jitter must be in [0, 1), got {self.jitter}")

    def delay(self, attempt: int, random: float = 0.5) -> float:
        """The delay after failed attempt ``attempt`` (1-based); ``random`` in [0, 1) picks the jitter."""
        base = min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1))
        return max(0.0, base * (1 + self.jitter * (2 * random - 1)))


class ConsumerOptions(TypedDict, total=False):
    """Per-subscription overrides of the broker's consumer defaults (see the README's option table)."""

    batch_size: int
    """Most messages asked for in one pull request."""
    fetch_wait: float
    """Seconds a pull request waits on the server for messages before it expires and is renewed."""
    concurrency: int
    """Most handlers of this subscription running at once (and so most messages held unacked)."""
    ack_wait: float
    """Seconds the server waits for an ack before it redelivers."""
    max_deliver: int
    """Most delivery attempts of one message; the last failure terminates it."""
    max_ack_pending: int
    """Most unacked messages across every instance of the consumer."""
    backoff: Backoff
    """Delay before a failed message is redelivered."""
    deliver_policy: Literal["all", "new", "last"]
    """Where a new consumer starts: ``all`` (durable default) or ``new`` (ephemeral default)."""
    inactive_threshold: float
    """Seconds after which the server removes an idle ephemeral consumer (no ``queue``)."""
    dead_letter: bool
    """Republish terminated messages to the dead-letter stream before terminating them (default True)."""
    handler_timeout: float | None
    """Cancel a handler running longer than this many seconds and retry its message (default: no limit)."""


@dataclass(frozen=True, slots=True)
class ConsumerState:
    """What the server knows of a consumer right now (for metrics, readiness, the admin page, idleness)."""

    stream: str
    name: str
    pending: int
    """Messages on its filter not delivered yet: the lag."""
    ack_pending: int
    """Messages delivered and not yet acked or terminated."""
    redelivered: int
    """Messages delivered more than once and still unacked."""
    delivered_stream_seq: int
    """The stream sequence of the last message delivered."""
    ack_floor_stream_seq: int
    """The stream sequence up to which every message is acked (or terminated)."""
    last_active: _dt.datetime | None = None
    """When it last delivered a message."""
    paused: bool = False
    paused_until: _dt.datetime | None = None
    """Until when the consumer is paused on the server (``broker.pause``), or ``None``."""


class Retry(Exception):
    """Raised by a handler: redeliver this message after ``after`` seconds (the backoff when ``None``).

    The attempt still counts toward ``max_deliver``.
    """

    def __init__(self, after: float | None = None, reason: str = "") -> None:
        if after is not None and after < 0:
            raise InvalidArgumentError(f"Retry(after=...) must be >= 0, got {after}")
        super().__init__(reason or (f"retry after {after:g}s" if after is not None else "retry"))
        self.after = after
        self.reason = reason

    def __repr__(self) -> str:
        return f"Retry(after={self.after!r}, reason={self.reason!r})"


class Ack(Exception):
    """Raised by a handler or one of its dependencies: acknowledge this message now, without running the
    rest of the handler. The inbox (:mod:`jetstream_fastapi.inbox`) raises it for a redelivery of a message
    whose handling committed before."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "acked")
        self.reason = reason

    def __repr__(self) -> str:
        return f"Ack(reason={self.reason!r})"


class Reject(Exception):
    """Raised by a handler: this message is poison, never redeliver it (it is terminated)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "rejected")
        self.reason = reason

    def __repr__(self) -> str:
        return f"Reject(reason={self.reason!r})"


if TYPE_CHECKING:
    # DeadLetter is part of the contract but still lives above it (it moves down with the module reshape).
    from .core.deadletters import DeadLetter
    from .core.recurring import RecurringSchedule, ScheduleDeclared, ScheduleInfo, ScheduleReport


@runtime_checkable
class Subscriber(Protocol):
    """A running subscription; ``unsubscribe()`` stops it gracefully."""

    @property
    def subject(self) -> str:
        """The subject (or wildcard filter) it consumes."""
        ...

    @property
    def queue(self) -> str | None:
        """The queue (durable consumer) name, or ``None`` for an ephemeral consumer."""
        ...

    @property
    def stream(self) -> str:
        """The stream its consumer reads."""
        ...

    @property
    def consumer_name(self) -> str:
        """Its consumer's name on the server (the queue, or a generated name for an ephemeral consumer)."""
        ...

    @property
    def state(self) -> str:
        """``"running"`` while it takes messages; ``"new"``, ``"stopping"`` or ``"stopped"`` otherwise."""
        ...

    @property
    def in_flight(self) -> int:
        """Handlers of this subscription running now."""
        ...

    @property
    def last_error(self) -> str | None:
        """The last problem it met (a refused pull, a failed consumer recreate), or ``None``."""
        ...

    @property
    def active(self) -> bool | None:
        """With ``exclusive=True``: whether this instance handles the queue now; ``None`` otherwise."""
        ...

    @property
    def counters(self) -> Counter[str]:
        """How often each rare path was taken (``dead_letters_lost``, ``replay_skipped``, a failed ack...)."""
        ...

    async def unsubscribe(self) -> None:
        """Stop pulling at once, let running handlers finish, give back the rest. Durables stay."""
        ...


@runtime_checkable
class ConsumerAdmin(Protocol):
    """The management plane of consumers: their state on the server, pause and resume."""

    async def consumer_states(self) -> list[ConsumerState]:
        """The state on the server of every running subscription's consumer: lag, ack pending, ..."""
        ...

    async def pause(self, queue: str, *, until: _dt.datetime, stream: str | None = None) -> None:
        """Pause the durable consumer ``queue`` on the server until ``until`` (an aware ``datetime``)."""
        ...

    async def resume(self, queue: str, *, stream: str | None = None) -> None:
        """End a pause of the durable consumer ``queue`` now."""
        ...


@runtime_checkable
class DeadLetterAdmin(Protocol):
    """The management plane of dead letters: inspect, replay, purge."""

    async def list_dead_letters(
        self,
        limit: int = 100,
        *,
        stream: str | None = None,
        consumer: str | None = None,
        after: int | None = None,
    ) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters (of the original ``stream`` and ``consumer`` when given) with a
        sequence above ``after`` (a cursor: the last ``seq`` of the page before; ``None``: from the first);
        at most ``limit`` are read from the store."""
        ...

    async def dead_letter(self, seq: int) -> DeadLetter:
        """Dead letter ``seq``; ``LookupError`` if none."""
        ...

    async def replay_dead_letter(self, seq: int) -> PubAck:
        """Publish dead letter ``seq`` again to its original subject, for its consumer only, and remove it
        (kept when the server answers ``duplicate``: the PubAck says so); ``LookupError`` if none."""
        ...

    async def purge_dead_letters(
        self, seqs: Iterable[int] | None = None, *, stream: str | None = None, consumer: str | None = None
    ) -> int:
        """Delete the dead letters ``seqs`` (or all of them, of ``stream``/``consumer``); how many."""
        ...


@runtime_checkable
class ScheduleAdmin(Protocol):
    """The management plane of recurring schedules, kept on the server."""

    async def declare_schedule(
        self,
        subject: str,
        *,
        cron: str | None = None,
        every: float | _dt.timedelta | None = None,
        timezone: str | None = None,
        message: Payload = b"",
        headers: dict[str, str] | None = None,
        name: str | None = None,
        ttl: float | _dt.timedelta | None = None,
        timeout: float | None = None,
    ) -> ScheduleDeclared:
        """Have the server publish ``message`` to ``subject`` at every tick of ``cron`` or ``every``."""
        ...

    async def declare_schedules(
        self, schedules: Iterable[RecurringSchedule], *, subjects: Iterable[str] = (), timeout: float | None = None
    ) -> ScheduleReport:
        """Declare ``schedules``, and report those kept in their streams (and ``subjects``') not among them."""
        ...

    async def schedules(self, stream: str) -> list[ScheduleInfo]:
        """The recurring schedules kept in ``stream``."""
        ...

    async def remove_schedule(self, subject: str, *, name: str | None = None) -> bool:
        """Delete the recurring schedule ``name`` (default: ``subject``); False if there was none."""
        ...


@runtime_checkable
class Broker(ConsumerAdmin, DeadLetterAdmin, ScheduleAdmin, Protocol):
    """What publishers, consumers and operators rely on; both brokers of this package satisfy it.

    The data plane is declared here; the management plane by :class:`ConsumerAdmin`,
    :class:`DeadLetterAdmin` and :class:`ScheduleAdmin`, which it extends."""

    @property
    def is_connected(self) -> bool:
        """Whether the broker can publish right now (False before ``connect`` and while reconnecting)."""
        ...

    @property
    def reconnects(self) -> int:
        """Times the connection was re-established after a loss."""
        ...

    async def connect(self) -> None:
        """Connect (idempotent)."""
        ...

    async def disconnect(self) -> None:
        """Stop every subscription gracefully, then drain and close (idempotent)."""
        ...

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
        delay: float | _dt.timedelta | None = None,
        at: _dt.datetime | None = None,
    ) -> PubAck:
        """Store a message and wait for the server's acknowledgement (with a TTL, on conditions, or
        delivered later: ``delay``/``at``)."""
        ...

    async def request(
        self, subject: str, message: Payload, *, headers: dict[str, str] | None = None, timeout: float | None = None
    ) -> Message:
        """Store a request on ``subject`` and wait for its handler's reply, within ``timeout`` seconds."""
        ...

    async def publish_many(
        self, messages: Iterable[PublishItem], *, window: int = 256, timeout: float | None = None
    ) -> list[PubAck]:
        """Publish many messages with up to ``window`` in flight; every PubAck, in order."""
        ...

    async def publish_batch(
        self, messages: Iterable[PublishItem], *, batch_id: str | None = None, timeout: float | None = None
    ) -> list[PubAck]:
        """Store messages as one atomic batch: all of them or none; every PubAck, in order."""
        ...

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
    ) -> Subscriber:
        """Start a pull worker that runs ``handler`` for each message on ``subject``."""
        ...

    @property
    def subscriptions(self) -> Sequence[Subscriber]:
        """The running subscriptions."""
        ...

    async def ping(self, timeout: float = 1.0) -> bool:
        """Whether the server answers within ``timeout`` seconds; False (never an exception) when it cannot."""
        ...

    async def wait_until_idle(self, timeout: float = 10.0) -> None:
        """Return once everything published so far has been handled to its end; ``TimeoutError`` after
        ``timeout`` seconds."""
        ...
