"""The broker's options, with their one set of defaults, checked once for every backend.

:class:`BrokerOptions` lists what both brokers take (the README's option table); the consumer options
among them are the defaults of every ``subscribe`` (:class:`~jetstream_fastapi.consuming.ConsumerSettings`
holds their default values). A misspelt name fails at construction with the nearest valid one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from ..driver import Backoff
from ..errors import InvalidArgumentError, UnknownOptionError
from .deadletters import DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES
from .handling import ConsumerSettings, DeliverPolicy

StreamMismatch = Literal["error", "warn", "update"]
"""What to do when a declared stream differs on the server: raise, log and keep it, or update it."""


class BrokerOptions(TypedDict, total=False):
    """The options of :class:`~jetstream_fastapi.JetStreamBroker` and :class:`~jetstream_fastapi.InMemoryBroker`."""

    batch_size: int
    """Most messages asked for in one pull request (default 10)."""
    fetch_wait: float
    """Seconds a pull request waits on the server before it expires and is renewed (default 5)."""
    concurrency: int | None
    """Most handlers of one subscription running at once (default: ``batch_size``)."""
    ack_wait: float
    """Seconds the server waits for an ack before it redelivers (default 30)."""
    max_deliver: int
    """Most delivery attempts of a message; the last failure dead-letters it (default 5, -1 unlimited)."""
    max_ack_pending: int
    """Most unacked messages across every instance of a consumer (default 1000, at least ``concurrency``)."""
    backoff: Backoff | None
    """Delay before a failed message is redelivered (default ``Backoff()``: 1 s doubling to 60 s)."""
    handler_timeout: float | None
    """Cancel a handler running longer than this many seconds and retry its message (default: no limit)."""
    deliver_policy: DeliverPolicy | None
    """Where a new consumer starts: ``"all"`` (the durable default), ``"new"`` (ephemeral default) or ``"last"``."""
    inactive_threshold: float
    """Seconds after which the server removes an idle ephemeral consumer (default 300)."""
    dead_letters: bool
    """Store terminated messages in the dead-letter stream before terminating them (default True)."""
    dead_letter_max_age: float
    """Seconds the dead-letter stream keeps a letter when it creates it (default 14 days)."""
    dead_letter_max_bytes: int
    """Most bytes of the dead-letter stream when it creates it; the oldest letters go first (default 1 GiB)."""
    streams: Iterable[Any]
    """Streams to create or reconcile at connect (nats-py ``StreamConfig`` objects)."""
    auto_provision: bool
    """Create a stream for a subject no stream captures (default True)."""
    stream_mismatch: StreamMismatch
    """A declared stream differing on the server: ``"error"`` (default), ``"warn"`` or ``"update"``."""
    publish_timeout: float
    """Default total deadline of a publish, retries included, in seconds (default 5)."""
    shutdown_timeout: float
    """Seconds running handlers get to finish on unsubscribe or disconnect (default 10)."""
    metrics: bool
    """Record the Prometheus and OpenTelemetry metrics, when ``prometheus-client`` (or an OpenTelemetry SDK meter
    provider) is installed (default True)."""
    tracing: bool
    """OpenTelemetry spans for publishes and handler runs, when ``opentelemetry-api`` is installed (default True)."""


BROKER_OPTIONS = frozenset(BrokerOptions.__annotations__)
_DEFAULTS = ConsumerSettings()


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    """What a backend does about streams: the declared ones, auto-provisioning, and declared-stream drift."""

    declared: tuple[Any, ...] = ()
    auto_provision: bool = True
    on_mismatch: StreamMismatch = "error"
    dead_letter_max_age: float = DEFAULT_MAX_AGE
    """Seconds the dead-letter stream keeps a letter."""
    dead_letter_max_bytes: int = DEFAULT_MAX_BYTES
    """Most bytes the dead-letter stream holds (the oldest letters are discarded past it)."""


@dataclass(frozen=True, slots=True)
class FrontSettings:
    """Every broker option, checked: the consumer defaults, the stream policy and the timeouts."""

    consumer: ConsumerSettings
    streams: StreamPolicy
    publish_timeout: float = 5.0
    shutdown_timeout: float = 10.0
    tracing: bool = True
    metrics: bool = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any], where: str = "the broker") -> FrontSettings:
        """Check ``options`` (unknown names raise :class:`UnknownOptionError`) and fill in the defaults."""
        for name in options:
            if name not in BROKER_OPTIONS:
                raise UnknownOptionError(where, name, BROKER_OPTIONS)
        batch_size = options.get("batch_size", _DEFAULTS.batch_size)
        concurrency = options.get("concurrency")
        concurrency = batch_size if concurrency is None else concurrency
        max_ack_pending = options.get("max_ack_pending", _DEFAULTS.max_ack_pending)
        if isinstance(max_ack_pending, int) and isinstance(concurrency, int):
            max_ack_pending = max(max_ack_pending, concurrency)
        consumer = ConsumerSettings(
            batch_size=batch_size,
            fetch_wait=options.get("fetch_wait", _DEFAULTS.fetch_wait),
            concurrency=concurrency,
            ack_wait=options.get("ack_wait", _DEFAULTS.ack_wait),
            max_deliver=options.get("max_deliver", _DEFAULTS.max_deliver),
            max_ack_pending=max_ack_pending,
            backoff=options.get("backoff") or _DEFAULTS.backoff,
            deliver_policy=options.get("deliver_policy", _DEFAULTS.deliver_policy),
            inactive_threshold=options.get("inactive_threshold", _DEFAULTS.inactive_threshold),
            dead_letter=options.get("dead_letters", _DEFAULTS.dead_letter),
            handler_timeout=options.get("handler_timeout", _DEFAULTS.handler_timeout),
        )
        mismatch = options.get("stream_mismatch", "error")
        if mismatch not in ("error", "warn", "update"):
            raise InvalidArgumentError(f"stream_mismatch must be 'error', 'warn' or 'update', not {mismatch!r}")
        declared = options.get("streams", ())
        if isinstance(declared, str | bytes) or not isinstance(declared, Iterable):
            raise InvalidArgumentError(f"streams must be a list of stream configs, got {declared!r}")
        max_age = options.get("dead_letter_max_age", DEFAULT_MAX_AGE)
        if not isinstance(max_age, int | float) or isinstance(max_age, bool) or not 1 <= max_age < float("inf"):
            raise InvalidArgumentError(f"dead_letter_max_age must be a number of seconds (at least 1), got {max_age!r}")
        max_bytes = options.get("dead_letter_max_bytes", DEFAULT_MAX_BYTES)
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1024:
            raise InvalidArgumentError(f"dead_letter_max_bytes must be an integer of at least 1024, got {max_bytes!r}")
        streams = StreamPolicy(
            tuple(declared), bool(options.get("auto_provision", True)), mismatch, float(max_age), max_bytes
        )
        timeouts = {
            name: options.get(name, default) for name, default in (("publish_timeout", 5.0), ("shutdown_timeout", 10.0))
        }
        for name, value in timeouts.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise InvalidArgumentError(f"{name} must be a positive number of seconds, got {value!r}")
        switches = {name: options.get(name, True) for name in ("tracing", "metrics")}
        for name, value in switches.items():
            if not isinstance(value, bool):
                raise InvalidArgumentError(f"{name} must be True or False, got {value!r}")
        return cls(
            consumer,
            streams,
            float(timeouts["publish_timeout"]),
            float(timeouts["shutdown_timeout"]),
            switches["tracing"],
            switches["metrics"],
        )
