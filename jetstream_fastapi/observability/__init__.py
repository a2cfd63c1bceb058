"""Observability: OpenTelemetry spans, Prometheus and OpenTelemetry metrics, and log fields, per message.

* Tracing (``opentelemetry-api``, the ``otel`` extra) is on whenever the API is importable and a no-op until
  the app sets an SDK tracer provider; ``tracing=False`` on the broker turns it off. See :mod:`.tracing`.
* Metrics (``prometheus_client``, the ``metrics`` extra) are recorded whenever it is importable; the app
  serves them with ``app.include_router(metrics_router())``. See :mod:`.metrics` and :mod:`.scrape`.
* Logs: every record about a message carries the fields of :func:`.logs.message_extra`.

The broker's front (:mod:`jetstream_fastapi.core.broker`) calls :mod:`.hooks`, the same for both backends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from ..driver import Message

__all__ = ["message_context"]


def message_context(message: Message) -> Context | Any:
    """The trace context in ``message``'s headers (``opentelemetry.context.Context``): pass it as
    ``context=`` to start a span under the publisher's. Needs ``opentelemetry-api``."""
    from .tracing import message_context as extract

    return extract(message)
