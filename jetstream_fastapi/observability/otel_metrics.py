"""The same instruments on the OpenTelemetry metrics API, for apps exporting with OTLP.

Created only when the app has set an SDK meter provider before the broker (see
:mod:`jetstream_fastapi.observability.metrics`). Attribute names are the conventions' dotted ones; the
Prometheus exporter of the OpenTelemetry SDK turns them into the same names :func:`metrics_router` serves.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from .._version import __version__

if TYPE_CHECKING:
    from .scrape import BrokerFigures, OutboxFigures

_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]


class OtelInstruments:
    """Counters and histograms of publishes and handler runs on the global meter provider."""

    def __init__(self) -> None:
        meter = metrics.get_meter("jetstream_fastapi", __version__)
        self.operation_duration = meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Duration of a publish, until the PubAck (or the failure).",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        self.sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}", description="Messages published."
        )
        self.consumed = meter.create_counter(
            "messaging.client.consumed.messages", unit="{message}", description="Messages delivered to a handler."
        )
        self.process_duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of a handler run, by outcome.",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        self.redeliveries = meter.create_counter(
            "jetstream.consumer.redeliveries", unit="{message}", description="Deliveries after the first one."
        )
        self.dead_letters = meter.create_counter(
            "jetstream.dead_letters", unit="{message}", description="Messages stored in the dead-letter stream."
        )
        # The scrape-time figures: each collection reads the last known ones and asks for a refresh.
        self._figures: weakref.WeakSet[BrokerFigures] = weakref.WeakSet()
        for name, description, read in (
            ("jetstream.consumer.pending_messages", "Messages not yet delivered to the consumer (lag).", _pending),
            ("jetstream.consumer.ack_pending_messages", "Messages delivered and not yet acknowledged.", _ack_pending),
            ("jetstream.handlers.in_flight", "Handlers running now in this process.", _in_flight),
        ):
            meter.create_observable_gauge(name, [self._callback(read)], unit="{message}", description=description)
        meter.create_observable_gauge(
            "jetstream.up", [self._up], description="1 when connected and the last read of consumer states succeeded."
        )
        meter.create_observable_counter(
            "jetstream.connection.reconnects", [self._reconnects], description="Times the connection came back."
        )
        # The outboxes' figures (jetstream_lifespan(..., outbox=...)): their table, their relay's counts.
        self._outboxes: weakref.WeakSet[OutboxFigures] = weakref.WeakSet()
        for name, unit, description, stat in (
            ("jetstream.outbox.backlog", "{message}", "Rows waiting to be published.", _backlog),
            ("jetstream.outbox.oldest_age", "s", "Age of the oldest waiting row.", _oldest_age),
            ("jetstream.outbox.failed", "{message}", "Rows that wait for an operator.", _failed),
        ):
            meter.create_observable_gauge(name, [self._outbox_callback(stat)], unit=unit, description=description)
        for name, description, index in (
            ("jetstream.outbox.published", "Rows stored in their stream by this process's relay.", 0),
            ("jetstream.outbox.dead_letters", "Rows refused for good and dead-lettered by this relay.", 1),
        ):
            meter.create_observable_counter(
                name, [self._outbox_counts(index)], unit="{message}", description=description
            )

    def observe(self, figures: BrokerFigures) -> None:
        """Report ``figures`` (one broker's) through the observable instruments."""
        figures.bind()
        self._figures.add(figures)

    def observe_outbox(self, figures: OutboxFigures) -> None:
        """Report ``figures`` (one outbox's) through the observable instruments."""
        figures.bind()
        self._outboxes.add(figures)

    def _outbox_callback(self, read: Any) -> Any:
        def callback(options: CallbackOptions) -> Iterator[Observation]:
            for figures in list(self._outboxes):
                figures.poke()
                stats = figures.stats()
                if stats is not None:
                    yield Observation(read(stats), {"jetstream.outbox.name": figures.name})

        return callback

    def _outbox_counts(self, index: int) -> Any:
        def callback(options: CallbackOptions) -> Iterator[Observation]:
            for figures in list(self._outboxes):
                counts = figures.counts()
                if counts is not None:
                    yield Observation(counts[index], {"jetstream.outbox.name": figures.name})

        return callback

    def _callback(self, read: Any) -> Any:
        def callback(options: CallbackOptions) -> Iterator[Observation]:
            for figures in list(self._figures):
                figures.poke()
                for labels, state, running in figures.rows():
                    value = read(state, running)
                    if value is not None:
                        yield Observation(value, _attributes(labels))

        return callback

    def _up(self, options: CallbackOptions) -> Iterator[Observation]:
        for figures in list(self._figures):
            yield Observation(1 if figures.up else 0)

    def _reconnects(self, options: CallbackOptions) -> Iterator[Observation]:
        for figures in list(self._figures):
            yield Observation(figures.reconnects)

    def published(self, destination: str, error_type: str, seconds: float) -> None:
        """One publish."""
        attributes = {"messaging.system": "nats", "messaging.destination.name": destination}
        if error_type:
            attributes["error.type"] = error_type
        self.sent.add(1, attributes)
        self.operation_duration.record(seconds, {**attributes, "messaging.operation.name": "publish"})

    def processed(
        self, labels: tuple[str, str], seconds: float, outcome: str, attempt: int, error: BaseException | None
    ) -> None:
        """One handler run."""
        attributes = {
            "messaging.system": "nats",
            "messaging.destination.name": labels[0],
            "messaging.consumer.group.name": labels[1],
        }
        self.consumed.add(1, attributes)
        self.process_duration.record(seconds, {**attributes, "messaging.nats.outcome": outcome})
        if attempt > 1:
            self.redeliveries.add(1, attributes)
        if outcome == "dead_letter":
            error_type = type(error).__qualname__ if error is not None else ""
            self.dead_letters.add(1, {**attributes, "error.type": error_type})


def _attributes(labels: list[str]) -> dict[str, str]:
    stream, consumer, subject, queue = labels
    return {
        "messaging.system": "nats",
        "messaging.nats.stream": stream,
        "messaging.nats.consumer": consumer,
        "messaging.destination.name": subject,
        "messaging.consumer.group.name": queue,
    }


def _pending(state: Any, running: int) -> int | None:
    return None if state is None else int(state.pending)


def _ack_pending(state: Any, running: int) -> int | None:
    return None if state is None else int(state.ack_pending)


def _in_flight(state: Any, running: int) -> int:
    return running


def _backlog(stats: Any) -> int:
    return int(stats.backlog)


def _oldest_age(stats: Any) -> float:
    return float(stats.oldest_age)


def _failed(stats: Any) -> int:
    return int(stats.failed)
