"""Dead letters: what a terminated message becomes, so that nothing is lost in silence.

When a message is rejected as poison (:class:`~jetstream_fastapi.driver.Reject`) or fails its last
attempt, the broker republishes it, body and headers, to ``deadletter.<stream>.<consumer>``, a subject
captured by the ``DEAD_LETTERS`` stream (Limits retention, so it can be inspected), with headers that
record where it came from and why it died. Only once that publish is acknowledged is the original
terminated; if it fails, the original is held (kept in progress) and its dead letter retried with
backoff; a worker that stops meanwhile gives it back, and its next delivery is dead-lettered (see
:mod:`~jetstream_fastapi.core.processing`).

Imports nothing from ``nats``: both brokers build and read dead letters with these functions.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from ..driver import MSG_ID_HEADER, Message
from ..driver import DeadLetterAdmin as DeadLetterAdmin  # the contract's; imported from here before

DEAD_LETTER_STREAM = "DEAD_LETTERS"
DEAD_LETTER_PREFIX = "deadletter"

ORIGINAL_SUBJECT = "Dlq-Original-Subject"
ORIGINAL_STREAM = "Dlq-Original-Stream"
ORIGINAL_SEQUENCE = "Dlq-Original-Sequence"
ORIGINAL_MSG_ID = "Dlq-Original-Msg-Id"
CONSUMER = "Dlq-Consumer"
ATTEMPTS = "Dlq-Attempts"
ERROR_TYPE = "Dlq-Error-Type"
ERROR = "Dlq-Error"
_OURS = (ORIGINAL_SUBJECT, ORIGINAL_STREAM, ORIGINAL_SEQUENCE, ORIGINAL_MSG_ID, CONSUMER, ATTEMPTS, ERROR_TYPE, ERROR)
_MAX_ERROR_TEXT = 1024


def dead_letter_subject(stream: str, consumer: str) -> str:
    """The subject a message terminated by ``consumer`` of ``stream`` is republished to."""
    return f"{DEAD_LETTER_PREFIX}.{stream}.{consumer}"


def dead_letter_msg_id(stream: str, sequence: int, consumer: str) -> str:
    """One id per original message and consumer: dead-lettering it twice stores it once."""
    return f"dlq-{stream}-{sequence}-{consumer}"


def dead_letter_headers(message: Message, error: BaseException | None) -> dict[str, str]:
    """The original headers plus where the message came from and why it was terminated."""
    delivery = message.delivery
    headers = {k: v for k, v in message.headers.items() if k != MSG_ID_HEADER}
    text = " ".join(str(error).split()) if error is not None else ""
    headers.update(
        {
            ORIGINAL_SUBJECT: message.subject,
            ORIGINAL_STREAM: delivery.stream if delivery else "",
            ORIGINAL_SEQUENCE: str(delivery.sequence if delivery else 0),
            CONSUMER: delivery.consumer if delivery else "",
            ATTEMPTS: str(message.attempt),
            ERROR_TYPE: type(error).__name__ if error is not None else "",
            ERROR: text[:_MAX_ERROR_TEXT],
        }
    )
    if message.msg_id:
        headers[ORIGINAL_MSG_ID] = message.msg_id
    # Ours are left out when empty; the original headers are kept as they are, empty values included.
    return {k: v for k, v in headers.items() if v != "" or k not in _OURS}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered message as stored in the dead-letter stream."""

    seq: int
    """Its sequence in the dead-letter stream (what :meth:`replay_dead_letter` takes)."""
    subject: str
    """The subject it was originally published to."""
    stream: str
    sequence: int
    """Its sequence in the original stream."""
    consumer: str
    attempts: int
    error_type: str
    error: str
    body: bytes
    headers: dict[str, str]
    """The original headers (without the dead-letter ones)."""
    timestamp: _dt.datetime | None = None
    """When it was dead-lettered."""

    @classmethod
    def from_stored(
        cls, seq: int, body: bytes, headers: dict[str, str], timestamp: _dt.datetime | None = None
    ) -> DeadLetter:
        """Read a dead letter back from a stored message's body and headers."""
        original = {k: v for k, v in headers.items() if k not in _OURS and k != MSG_ID_HEADER}
        if ORIGINAL_MSG_ID in headers:
            original[MSG_ID_HEADER] = headers[ORIGINAL_MSG_ID]
        return cls(
            seq=seq,
            subject=headers.get(ORIGINAL_SUBJECT, ""),
            stream=headers.get(ORIGINAL_STREAM, ""),
            sequence=int(headers.get(ORIGINAL_SEQUENCE, "0")),
            consumer=headers.get(CONSUMER, ""),
            attempts=int(headers.get(ATTEMPTS, "0")),
            error_type=headers.get(ERROR_TYPE, ""),
            error=headers.get(ERROR, ""),
            body=body,
            headers=original,
            timestamp=timestamp,
        )

    def replay(self) -> Message:
        """The message a replay publishes: the original body and headers, with a msg id of its own (the
        original id would be dropped as a duplicate within the window; this one stores a double replay once)."""
        headers = {k: v for k, v in self.headers.items() if k != MSG_ID_HEADER}
        headers[MSG_ID_HEADER] = f"replay-{DEAD_LETTER_STREAM}-{self.seq}"
        return Message(body=self.body, headers=headers)

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly view (the body decoded as UTF-8 with replacement), for an admin endpoint."""
        return {
            "seq": self.seq,
            "subject": self.subject,
            "stream": self.stream,
            "sequence": self.sequence,
            "consumer": self.consumer,
            "attempts": self.attempts,
            "error_type": self.error_type,
            "error": self.error,
            "body": self.body.decode("utf-8", "replace"),
            "headers": self.headers,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
        }
