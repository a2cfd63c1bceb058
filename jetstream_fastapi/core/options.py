"""The broker's options, with their one set of defaults, checked once for every backend.

:class:`BrokerOptions` lists what both brokers take (the README's option table); the consumer options
among them are the defaults of every ``subscribe`` (:class:`~jetstream_fastapi.core.handling.ConsumerSettings`
holds their default values). A misspelt name fails at construction with the nearest valid one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..driver import ConsumerOptions
from ..errors import InvalidArgumentError, UnknownOptionError
from .deadletters import DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES
from .handling import ConsumerSettings

StreamMismatch = Literal["error", "warn", "update"]
"""What to do when a declared stream differs on the server: raise, log and keep it, or update it."""


class BrokerOptions(ConsumerOptions, total=False):
    """The options of :class:`~jetstream_fastapi.JetStreamBroker` and :class:`~jetstream_fastapi.InMemoryBroker`.

    The consumer options (:class:`~jetstream_fastapi.driver.ConsumerOptions`, declared once there) are the
    defaults of every ``subscribe``: ``batch_size`` 10, ``fetch_wait`` 5 s, ``concurrency`` ``batch_size``,
    ``ack_wait`` 30 s, ``max_deliver`` 5, ``max_ack_pending`` 1000 (at least ``concurrency``), ``backoff``
    ``Backoff()``, ``deliver_policy`` ``"all"`` for a durable and ``"new"`` for an ephemeral consumer,
    ``inactive_threshold`` 300 s, ``dead_letter`` True, ``handler_timeout`` none. The others are the broker's.
    """

    connect_timeout: float
    """Seconds ``connect()`` may take before :class:`~jetstream_fastapi.ConnectError` (default 5; the
    in-memory broker connects at once and accepts it for code written for either broker)."""
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


OLD_SPELLINGS = {"dead_letters": "dead_letter"}
"""Broker option names of earlier releases, still accepted: the broker's ``dead_letters`` is the consumer
option ``dead_letter`` (the same switch, one name)."""
BROKER_OPTIONS = frozenset(BrokerOptions.__annotations__) | frozenset(OLD_SPELLINGS)
"""Every name a broker takes as an option (its old spellings included)."""
_DEFAULTS = ConsumerSettings()
CONSUMER_OPTIONS = frozenset(ConsumerOptions.__annotations__)


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
    connect_timeout: float = 5.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any], where: str = "the broker") -> FrontSettings:
        """Check ``options`` (unknown names raise :class:`UnknownOptionError`) and fill in the defaults."""
        for name in options:
            if name not in BROKER_OPTIONS:
                raise UnknownOptionError(where, name, BROKER_OPTIONS)
        consumer = consumer_settings(options)
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
            name: options.get(name, default)
            for name, default in (("publish_timeout", 5.0), ("shutdown_timeout", 10.0), ("connect_timeout", 5.0))
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
            float(timeouts["connect_timeout"]),
        )


def consumer_settings(options: Mapping[str, Any]) -> ConsumerSettings:
    """The broker's consumer defaults: the consumer options among ``options``, over the built-in defaults.

    ``concurrency`` defaults to ``batch_size`` (``None`` too), ``max_ack_pending`` is raised to ``concurrency``
    when lower, and ``None`` for ``backoff`` means the default backoff."""
    given = {OLD_SPELLINGS.get(name, name): value for name, value in options.items()}
    chosen = {name: given[name] for name in CONSUMER_OPTIONS if given.get(name) is not None}
    if "concurrency" not in chosen and "batch_size" in chosen:
        chosen["concurrency"] = chosen["batch_size"]
    concurrency, max_ack_pending = chosen.get("concurrency"), chosen.get("max_ack_pending", _DEFAULTS.max_ack_pending)
    if isinstance(max_ack_pending, int) and isinstance(concurrency, int):
        chosen["max_ack_pending"] = max(max_ack_pending, concurrency)
    return dataclasses.replace(_DEFAULTS, **chosen)
