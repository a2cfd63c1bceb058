"""The per-message instruments: Prometheus (``prometheus_client``) and the OpenTelemetry metrics API.

Names follow the OpenTelemetry messaging metrics in Prometheus form (``messaging.process.duration`` in
seconds becomes ``messaging_process_duration_seconds``); the JetStream figures no convention names start
with ``jetstream_``. Labels have bounded cardinality: a consumer's subscribed subject (its filter) and queue,
never a message's concrete subject or id. A publish is labelled by its subject, which is concrete: past
:data:`DESTINATION_LIMIT` distinct subjects the rest are counted under ``_other``.

The Prometheus instruments live in ``prometheus_client``'s default registry, once per process (so they work
in its multiprocess mode, for several uvicorn workers); the OpenTelemetry ones are recorded only when the app
has set an SDK meter provider before the broker was created. Children are bound once per subscription, so a
handled message costs a counter increment and a histogram observation.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any

from .tally import TallyHistogram


def importable(name: str) -> bool:
    """Whether package ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


PROMETHEUS = importable("prometheus_client")
"""Whether ``prometheus_client`` is importable (the ``metrics`` extra)."""
OPENTELEMETRY = importable("opentelemetry")
"""Whether ``opentelemetry-api`` is importable (the ``otel`` extra)."""

DESTINATION_LIMIT = 256
"""Most distinct publish subjects labelled one by one; further subjects share the ``_other`` label."""
OTHER = "_other"

# The OpenTelemetry conventions' advisory buckets for messaging durations, in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

DEST = "messaging_destination_name"
GROUP = "messaging_consumer_group_name"
ERROR = "error_type"

_lock = threading.Lock()
_instruments: Instruments | None = None


class Instruments:
    """The process's instruments, created once (:func:`instruments`)."""

    def __init__(self) -> None:
        self.prometheus = PROMETHEUS
        self.otel: Any = _otel_instruments() if OPENTELEMETRY else None
        if not self.prometheus:
            return
        from prometheus_client import REGISTRY, Counter, Histogram

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            histogram: Any = Histogram  # values in the files the workers share
        else:

            def histogram(name: str, documentation: str, labelnames: list[str], buckets: tuple[float, ...]) -> Any:
                tally = TallyHistogram(name, documentation, labelnames, buckets)
                REGISTRY.register(tally)
                return tally

        self.operation_duration = histogram(
            "messaging_client_operation_duration_seconds",
            "Duration of a publish, until the PubAck (or the failure).",
            ["messaging_operation_name", DEST, ERROR],
            buckets=BUCKETS,
        )
        # messaging_client_sent_messages_total and messaging_client_consumed_messages_total are the counts of
        # these two histograms, derived at scrape time (scrape.WithDerivedCounters): one instrument per message.
        self.process_duration = histogram(
            "messaging_process_duration_seconds",
            "Duration of a handler run, by outcome: ack, nak, dead_letter or term.",
            [DEST, GROUP, "outcome"],
            buckets=BUCKETS,
        )
        self.redeliveries = Counter(
            "jetstream_consumer_redeliveries", "Deliveries after the first one (attempt > 1).", [DEST, GROUP]
        )
        self.dead_letters = Counter(
            "jetstream_dead_letters", "Messages stored in the dead-letter stream, by error type.", [DEST, GROUP, ERROR]
        )


def instruments() -> Instruments:
    """The process's instruments (created at the first call)."""
    global _instruments
    if _instruments is None:
        with _lock:
            if _instruments is None:
                _instruments = Instruments()
    return _instruments


def enabled() -> bool:
    """Whether any instrument records: ``prometheus_client`` is importable or an OpenTelemetry SDK meter
    provider is set."""
    return PROMETHEUS or (OPENTELEMETRY and _sdk_meter_provider())


def _sdk_meter_provider() -> bool:
    from opentelemetry import metrics

    provider = metrics.get_meter_provider()
    return not isinstance(provider, metrics.NoOpMeterProvider) and type(provider).__name__ != "_ProxyMeterProvider"


def _otel_instruments() -> Any:
    if not _sdk_meter_provider():
        return None
    from .otel_metrics import OtelInstruments

    return OtelInstruments()


class PublishMeter:
    """Records publishes, labelled by subject (bounded by :data:`DESTINATION_LIMIT`)."""

    def __init__(self) -> None:
        self._instruments = instruments()
        self._subjects: set[str] = set()
        # (subject, error type) -> (label, histogram child): a publish costs a dict lookup, not a labels() call.
        self._children: dict[tuple[str, str], tuple[str, Any]] = {}

    def _bind(self, subject: str, error_type: str) -> tuple[str, Any]:
        if subject in self._subjects or len(self._subjects) < DESTINATION_LIMIT:
            self._subjects.add(subject)
            destination = subject
        else:
            destination = OTHER
        ins = self._instruments
        child = ins.operation_duration.labels("publish", destination, error_type) if ins.prometheus else None
        bound = (destination, child)
        if len(self._children) < 4 * DESTINATION_LIMIT:
            self._children[subject, error_type] = bound
        return bound

    def record(self, subject: str, seconds: float, error: BaseException | None) -> None:
        """One publish of ``subject`` that took ``seconds`` and failed with ``error`` (or not)."""
        error_type = "" if error is None else type(error).__qualname__
        bound = self._children.get((subject, error_type)) or self._bind(subject, error_type)
        if bound[1] is not None:
            bound[1].observe(seconds)
        otel = self._instruments.otel
        if otel is not None:
            otel.published(bound[0], error_type, seconds)


class ConsumerMeter:
    """Records the handler runs of one subscription; its label children are bound once."""

    def __init__(self, subject: str, queue: str | None) -> None:
        self._instruments = ins = instruments()
        self._labels = (subject, queue or "")
        self._prometheus = ins.prometheus
        if ins.prometheus:
            self._redelivered = ins.redeliveries.labels(*self._labels)
            self._durations = {
                outcome: ins.process_duration.labels(*self._labels, outcome)
                for outcome in ("ack", "nak", "dead_letter", "term")
            }
        self._otel = ins.otel

    def record(self, seconds: float, outcome: str, attempt: int, error: BaseException | None) -> None:
        """One handler run: ``outcome`` is ``ack``, ``nak``, ``dead_letter`` or ``term``."""
        if self._prometheus:
            self._durations[outcome].observe(seconds)
            if attempt > 1:
                self._redelivered.inc()
            if outcome == "dead_letter":
                error_type = type(error).__qualname__ if error is not None else ""
                self._instruments.dead_letters.labels(*self._labels, error_type).inc()
        if self._otel is not None:
            self._otel.processed(self._labels, seconds, outcome, attempt, error)
