"""The ``extra`` fields of every log record the library writes about a message.

``stream``, ``sequence``, ``consumer``, ``attempt``, ``msg_id`` and ``subject`` (so a JSON formatter shows
which message a line is about), and ``trace_id`` when the record is written inside a sampled trace.
"""

from __future__ import annotations

import sys
from typing import Any

from ..driver import MSG_ID_HEADER, Message


def message_extra(message: Message) -> dict[str, Any]:
    """The ``extra=`` mapping for a log record about ``message``."""
    delivery = message.delivery
    extra: dict[str, Any] = {
        "subject": message.subject,
        "stream": delivery.stream if delivery else None,
        "sequence": delivery.sequence if delivery else None,
        "consumer": delivery.consumer if delivery else None,
        "attempt": message.attempt,
        "msg_id": message.headers.get(MSG_ID_HEADER),
    }
    # Only when OpenTelemetry is loaded already (the broker's tracing imports it): a log line never imports it.
    if "jetstream_fastapi.observability.tracing" in sys.modules:
        from .tracing import current_trace_id

        trace_id = current_trace_id()
        if trace_id is not None:
            extra["trace_id"] = trace_id
    return extra
