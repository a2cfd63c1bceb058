"""Turning what a caller publishes into a body and headers, with checks that run before the server sees it.

Imports nothing from ``nats``; both brokers use it.
"""

from __future__ import annotations

import re

from ..driver import CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE, Message, Payload
from ..errors import InvalidArgumentError, InvalidHeaderError

MAX_HEADERS_SIZE = 65535
"""The largest header block (``NATS/1.0`` line included) a JetStream server stores: a larger one is refused
with error 10097 (measured on nats-server 2.15.1: 65,535 bytes stored, 65,536 refused)."""


def coerce_message(message: Payload, headers: dict[str, str] | None) -> tuple[bytes, dict[str, str]]:
    """The body and a fresh headers dict (the message's, then ``headers``) of something to publish."""
    if isinstance(message, Message):
        body, merged = message.body, dict(message.headers)
    elif isinstance(message, bytes):
        body, merged = message, {}
    elif isinstance(message, str):
        body, merged = message.encode(), {}
    elif isinstance(message, type):  # Order instead of Order(...): its unbound model_dump_json would fail
        raise InvalidArgumentError(
            f"cannot publish the class {message.__name__}: publish an instance: {message.__name__}(...)"
        )
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
        # The NATS protocol trims the space around a value: do it here, so both brokers store the same.
        merged = {key: value.strip() for key, value in merged.items()}
    return body, merged


# An HTTP token (RFC 9110), as nats-py requires of header names.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def check_headers(headers: dict[str, str]) -> None:
    """Raise :class:`~jetstream_fastapi.errors.InvalidHeaderError` for a header that cannot travel in the
    NATS protocol (their total size is checked with the message's, see :data:`MAX_HEADERS_SIZE`)."""
    for key, value in headers.items():
        if not isinstance(key, str) or not _HEADER_NAME.fullmatch(key):
            name = key[:40] + "..." if isinstance(key, str) and len(key) > 40 else key
            raise InvalidHeaderError(f"invalid header name {name!r}: letters, digits and !#$%&'*+-.^_`|~ only")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise InvalidHeaderError(f"header {key[:40]!r} must be a single-line string, got {value!r:.80}")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidHeaderError(f"header {key[:40]!r} is not valid UTF-8 text: {value!r:.80}") from None


def parse_headers(block: bytes) -> dict[str, str]:
    """The headers of a ``NATS/1.0`` header block, values decoded as UTF-8 (invalid bytes replaced).

    A name given several times (NATS allows it) keeps its last value, as nats-py does for consumed
    messages: this package reads and writes one value per header name.
    """
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n")[1:]:  # the first line is NATS/1.0 (and a status, if any)
        name, colon, value = line.partition(b":")
        if colon and name.strip():
            headers[name.strip().decode("ascii", "replace")] = value.strip().decode("utf-8", "replace")
    return headers


def headers_size(headers: dict[str, str]) -> int:
    """Bytes of the ``NATS/1.0`` header block for ``headers``, as the server counts it against its limit."""
    size = len(b"NATS/1.0\r\n\r\n")
    for key, value in headers.items():
        size += len(key.encode()) + len(value.strip().encode()) + 4  # ": " and CRLF
    return size


def check_msg_id(msg_id: object) -> str:
    """Return ``msg_id`` if it can be a ``Nats-Msg-Id``; raise :class:`InvalidArgumentError` otherwise."""
    if not isinstance(msg_id, str) or not msg_id.strip() or "\r" in msg_id or "\n" in msg_id:
        raise InvalidArgumentError(f"msg_id must be a non-empty single-line string, got {msg_id!r}")
    return msg_id


def encode_headers(headers: dict[str, str]) -> bytes:
    """The ``NATS/1.0`` header block of ``headers`` (checked by :func:`check_headers`), values trimmed as
    nats-py trims them."""
    lines = "".join(f"{key}: {value.strip()}\r\n" for key, value in headers.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()
