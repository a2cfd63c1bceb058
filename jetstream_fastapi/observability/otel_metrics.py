"""The same instruments on the OpenTelemetry metrics API, for apps exporting with OTLP.

Created only when the app has set an SDK meter provider before the broker (see
:mod:`jetstream_fastapi.observability.metrics`). Attribute names are the conventions' dotted ones; the
Prometheus exporter of the OpenTelemetry SDK turns them into the same names :func:`metrics_router` serves.
"""

from __future__ import annotations

from opentelemetry import metrics

from .. import __version__

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
