"""Spans on the OpenTelemetry API: ``publish <subject>`` (PRODUCER) and ``process <subscribed subject>`` (CONSUMER).

Imported only when ``opentelemetry-api`` is importable (see :mod:`jetstream_fastapi.observability`). The API
is a no-op until the app configures an SDK tracer provider, so this costs little until then. Names and
attributes follow the OpenTelemetry messaging semantic conventions (``messaging.operation.type`` ``send``
and ``process``, ``messaging.system`` ``nats``); JetStream facts go under ``messaging.nats.``.

The W3C trace context (``traceparent``, ``tracestate``) and baggage travel in the message headers, through
the global propagator: one trace runs from the request that published a message to every handler run of it,
redeliveries included (they carry the same headers).
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .._version import __version__
from ..driver import Message

SYSTEM = "nats"
"""``messaging.system``: the conventions register no value for NATS; ``nats`` is the one in use."""

_tracer = trace.get_tracer("jetstream_fastapi", __version__)
_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


_sdk_seen = False
_next_look = 0.0


def active() -> bool:
    """Whether the app has set a tracer provider (an SDK): until then no span is made at all, which
    saves the header parsing and context switching a no-op span would still cost on every message.

    ``get_tracer_provider()`` reads ``os.environ`` on every call while none is set, so it is asked at most
    once a second; the global provider can be set once per process, so once seen it stays."""
    global _sdk_seen, _next_look
    if _sdk_seen:
        return True
    now = time.monotonic()
    if now < _next_look:
        return False
    _next_look = now + 1.0
    _sdk_seen = not isinstance(trace.get_tracer_provider(), _NO_SDK)
    return _sdk_seen


def message_context(message: Message) -> Context:
    """The trace context ``message`` carries in its headers (an empty context when it has none, or a
    malformed one): what a handler passes as ``context=`` to start a span of its own under the publisher's."""
    try:
        return propagate.extract(message.headers)
    except Exception:  # a malformed header starts a new trace; it never fails the handler
        return Context()


def start_publish(subject: str, headers: dict[str, str], body_size: int) -> Span:
    """Start the PRODUCER span of one publish (child of the current span) and inject its context into
    ``headers``."""
    span = _tracer.start_span(f"publish {subject}", kind=SpanKind.PRODUCER)
    if span.is_recording():
        span.set_attributes(
            {
                "messaging.system": SYSTEM,
                "messaging.operation.name": "publish",
                "messaging.operation.type": "send",
                "messaging.destination.name": subject,
                "messaging.message.id": headers.get("Nats-Msg-Id", ""),
                "messaging.message.body.size": body_size,
            }
        )
    if span.get_span_context().is_valid:
        propagate.inject(headers, context=trace.set_span_in_context(span))
    return span


def end_publish(span: Span, stream: str | None, seq: int | None, error: BaseException | None) -> None:
    """End a publish span with where the message was stored, or why it was not."""
    if span.is_recording():
        if error is not None:
            _record_error(span, error)
        elif stream is not None and seq is not None:
            span.set_attributes({"messaging.nats.stream": stream, "messaging.nats.stream.sequence": seq})
    span.end()


def start_process(message: Message, subject: str, queue: str | None) -> tuple[Span, object]:
    """Start the CONSUMER span of one handler run, child of the context in the message's headers, and make
    it current (the handler's logs and publishes belong to it). Returns the span and the token to detach."""
    span = _tracer.start_span(f"process {subject}", context=message_context(message), kind=SpanKind.CONSUMER)
    if span.is_recording():
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": subject,
            "messaging.message.body.size": len(message.body),
        }
        if queue is not None:
            attributes["messaging.consumer.group.name"] = queue
        msg_id = message.headers.get("Nats-Msg-Id")
        if msg_id is not None:
            attributes["messaging.message.id"] = msg_id
        delivery = message.delivery
        if delivery is not None:
            attributes["messaging.nats.stream"] = delivery.stream
            attributes["messaging.nats.stream.sequence"] = delivery.sequence
            attributes["messaging.nats.consumer"] = delivery.consumer
            attributes["messaging.nats.delivery.attempt"] = delivery.attempt
        span.set_attributes(attributes)
    token = otel_context.attach(trace.set_span_in_context(span))
    return span, token


def end_process(span: Span, token: object, outcome: str, delay: float, error: BaseException | None) -> None:
    """Record the outcome (``ack``, ``nak`` with its delay, ``dead_letter``, ``term``) and end the span."""
    otel_context.detach(token)  # type: ignore[arg-type]
    if span.is_recording():
        span.set_attribute("messaging.nats.outcome", outcome)
        if outcome == "nak":
            span.set_attribute("messaging.nats.nak.delay", delay)
        if error is not None:
            _record_error(span, error)
    span.end()


def _record_error(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_attribute("error.type", type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR, str(error)[:256]))


def current_trace_id() -> str | None:
    """The current span's trace id (32 hex digits), or ``None`` outside a sampled trace."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
