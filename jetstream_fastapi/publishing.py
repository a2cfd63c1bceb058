"""Turning what a caller publishes into a body and headers, with checks that run before the server sees it.

Imports nothing from ``nats``; both brokers use it.
"""

from __future__ import annotations

from .driver import CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE, Message, Payload
from .errors import InvalidArgumentError


def coerce_message(message: Payload, headers: dict[str, str] | None) -> tuple[bytes, dict[str, str]]:
    """The body and a fresh headers dict (the message's, then ``headers``) of something to publish."""
    if isinstance(message, Message):
        body, merged = message.body, dict(message.headers)
    elif isinstance(message, bytes):
        body, merged = message, {}
    elif isinstance(message, str):
        body, merged = message.encode(), {}
    elif hasattr(message, "model_dump_json"):  # a pydantic model, without importing pydantic here
        body, merged = message.model_dump_json().encode(), {CONTENT_TYPE_HEADER: JSON_CONTENT_TYPE}
    elif isinstance(message, bytearray | memoryview):
        body, merged = bytes(message), {}
    else:
        raise InvalidArgumentError(
            f"message must be a Message, bytes, str or a pydantic model, not {type(message).__name__}"
        )
    if headers:
        merged.update(headers)
    if merged:
        check_headers(merged)
    return body, merged


def check_headers(headers: dict[str, str]) -> None:
    """Raise :class:`InvalidArgumentError` for a header that cannot travel in the NATS protocol."""
    for key, value in headers.items():
        if not isinstance(key, str) or not key or any(c in key for c in ": \t\r\n"):
            raise InvalidArgumentError(f"invalid header name {key!r}")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise InvalidArgumentError(f"header {key!r} must be a single-line string, got {value!r}")
