"""Dead letters: what a terminated message becomes, so that nothing is lost in silence.

When a message is rejected as poison (:class:`~jetstream_fastapi.driver.Reject`) or fails its last
attempt, the broker republishes it, body and headers, to ``deadletter.<stream>.<consumer>``, a subject
captured by the ``DEAD_LETTERS`` stream (Limits retention, so it can be inspected), with headers that
record where it came from and why it died. Only once that publish is acknowledged is the original
terminated; if it fails for a reason that may pass (no answer, the connection down, the stream being
recreated), the original is held (kept in progress) and its dead letter retried with backoff; a refusal
that can never succeed terminates it with an ERROR log and the ``dead_letters_lost`` counter (see
:mod:`~jetstream_fastapi.core.processing`).

A message is data written by someone else, so its letter never carries an instruction to the server:

* the original headers the server would act on (every ``Nats-*`` name: ``Nats-TTL``, ``Nats-Schedule*``,
  ``Nats-Expected-*``, ``Nats-Rollup``, ``Nats-Batch-*``, ``Nats-Stream-Source``...) are kept under the
  neutral name ``Dlq-Kept-<name>``; a replay restores only the TTL;
* headers whose name this package could not publish (not an RFC 9110 token) or that would pose as ours
  (``Dlq-*``) are kept together as one JSON object in ``Dlq-Original-Headers``;
* a letter larger than the server's limit keeps the first bytes of the body (``Dlq-Truncated``, with the
  original size in ``Dlq-Original-Size``; the original stream and sequence say where the rest is).

Reading a letter trusts nothing in it either: a letter missing a field or with a field that does not parse
is listed with :attr:`DeadLetter.malformed` saying why, and is never replayed.

Imports nothing from ``nats``: both brokers build and read dead letters with these functions.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass

from ..driver import MSG_ID_HEADER, Message
from ..driver import DeadLetterAdmin as DeadLetterAdmin  # the contract's; imported from here before
from ..errors import InvalidArgumentError, JetStreamError, PublishError, PublishTimeoutError
from .payloads import headers_size

DEAD_LETTER_STREAM = "DEAD_LETTERS"
DEAD_LETTER_PREFIX = "deadletter"
DEFAULT_MAX_AGE = 14 * 24 * 3600.0
"""How long the dead-letter stream keeps a letter by default, in seconds (14 days)."""
DEFAULT_MAX_BYTES = 1024**3
"""The most bytes the dead-letter stream holds by default (1 GiB); past it the oldest letters go."""

ORIGINAL_SUBJECT = "Dlq-Original-Subject"
ORIGINAL_STREAM = "Dlq-Original-Stream"
ORIGINAL_SEQUENCE = "Dlq-Original-Sequence"
ORIGINAL_MSG_ID = "Dlq-Original-Msg-Id"
CONSUMER = "Dlq-Consumer"
ATTEMPTS = "Dlq-Attempts"
ERROR_TYPE = "Dlq-Error-Type"
ERROR = "Dlq-Error"
ORIGINAL_HEADERS = "Dlq-Original-Headers"
"""Original headers that could not be kept as they were (odd names, ``Dlq-*`` names), as one JSON object."""
KEPT_PREFIX = "Dlq-Kept-"
"""The neutral name of an original ``Nats-*`` header: ``Dlq-Kept-Nats-TTL`` and so on."""
TRUNCATED = "Dlq-Truncated"
"""``body``, or ``headers,body``: what of the original the letter does not hold in full."""
ORIGINAL_SIZE = "Dlq-Original-Size"
REPLAY_CONSUMER = "Dlq-Replay-Consumer"
"""On a replayed message: the one consumer that runs its handler; the library's other consumers ack it."""
_OURS = (ORIGINAL_SUBJECT, ORIGINAL_STREAM, ORIGINAL_SEQUENCE, ORIGINAL_MSG_ID, CONSUMER, ATTEMPTS, ERROR_TYPE, ERROR)
_MAX_ERROR_TEXT = 1024
# Room left in a letter for the headers the publish adds (its msg id, the expected stream).
_PUBLISH_HEADROOM = 512
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token: what a header name may be
_TTL = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_TTL_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def dead_letter_subject(stream: str, consumer: str) -> str:
    """The subject a message terminated by ``consumer`` of ``stream`` is republished to."""
    return f"{DEAD_LETTER_PREFIX}.{stream}.{consumer}"


def dead_letter_msg_id(stream: str, sequence: int, consumer: str) -> str:
    """One id per original message and consumer: dead-lettering it twice stores it once."""
    return f"dlq-{stream}-{sequence}-{consumer}"


def _server_header(name: str) -> bool:
    return name[:5].lower() == "nats-"


def _plain_header(name: str) -> bool:
    """A name kept as it is: a token, neither the server's (``Nats-*``) nor ours (``Dlq-*``)."""
    return bool(_TOKEN.fullmatch(name)) and not _server_header(name) and name[:4].lower() != "dlq-"


def dead_letter_headers(message: Message, error: BaseException | None) -> dict[str, str]:
    """The original headers made inert (see the module docstring) plus where the message came from and why
    it was terminated."""
    delivery = message.delivery
    headers: dict[str, str] = {}
    odd: dict[str, str] = {}
    for name, value in message.headers.items():
        if name == MSG_ID_HEADER:
            continue  # recorded as ORIGINAL_MSG_ID
        if "\r" in value or "\n" in value:
            odd[name] = value
        elif _plain_header(name):
            headers[name] = value
        elif _server_header(name) and _TOKEN.fullmatch(name):
            headers[KEPT_PREFIX + name] = value
        else:
            odd[name] = value
    if odd:
        headers[ORIGINAL_HEADERS] = json.dumps(odd, ensure_ascii=True, separators=(",", ":"))
    text = " ".join(str(error).split()) if error is not None else ""
    ours = {
        ORIGINAL_SUBJECT: message.subject,
        ORIGINAL_STREAM: delivery.stream if delivery else "",
        ORIGINAL_SEQUENCE: str(delivery.sequence if delivery else 0),
        CONSUMER: delivery.consumer if delivery else "",
        ATTEMPTS: str(message.attempt),
        ERROR_TYPE: type(error).__name__ if error is not None else "",
        ERROR: text[:_MAX_ERROR_TEXT],
    }
    if message.msg_id:
        ours[ORIGINAL_MSG_ID] = message.msg_id
    headers.update({k: v for k, v in ours.items() if v != ""})  # ours are left out when empty
    return headers


def dead_letter(message: Message, error: BaseException | None, max_payload: int) -> Message:
    """The letter of ``message``: its body and :func:`dead_letter_headers`, cut to fit ``max_payload``."""
    headers = dead_letter_headers(message, error)
    body = message.body
    room = max_payload - _PUBLISH_HEADROOM
    if len(body) + headers_size(headers) <= room:
        return Message(body=body, headers=headers)
    cut = ["body"]
    if headers_size(headers) > room // 2:
        # The original headers alone are too large: keep ours, the original stream sequence points at the rest.
        headers = {k: v for k, v in headers.items() if k in _OURS}
        cut.insert(0, "headers")
    headers[TRUNCATED] = ",".join(cut)
    headers[ORIGINAL_SIZE] = str(len(body))
    keep = max(0, room - headers_size(headers))
    return Message(body=body[:keep], headers=headers)


def permanent(error: JetStreamError) -> bool:
    """Whether storing a dead letter failed for good: refused as invalid before sending, or answered with
    an error by the server (a limit of the stream, another stream capturing the subject); not when no answer
    came, the connection was down, or the server was unavailable (503), which may pass."""
    if isinstance(error, InvalidArgumentError):
        return True
    return isinstance(error, PublishError) and not isinstance(error, PublishTimeoutError) and error.code != 503


def _ttl_seconds(value: str) -> float | None:
    """A ``Nats-TTL`` value (``60``, ``1500ms``, ``2m``...) in seconds; ``None`` for anything else."""
    found = _TTL.fullmatch(value.strip())
    if found is None:
        return None
    seconds = float(found.group(1)) * _TTL_UNITS[found.group(2)]
    return seconds if seconds >= 1.0 else None


def _whole(headers: dict[str, str], name: str, problems: list[str], *, required: bool = True) -> int:
    value = headers.get(name)
    if value is None and not required:
        return 0
    if value is None or not value.isdigit():
        problems.append(f"{name} is {'missing' if value is None else repr(value[:40])}")
        return 0
    return int(value)


def _original_headers(headers: dict[str, str], problems: list[str]) -> dict[str, str]:
    """The original headers, restored from their letter form."""
    original: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith(KEPT_PREFIX):
            original[name[len(KEPT_PREFIX) :]] = value
        elif _plain_header(name):
            original[name] = value
    if ORIGINAL_HEADERS in headers:
        try:
            odd = json.loads(headers[ORIGINAL_HEADERS])
        except ValueError:
            odd = None
        if isinstance(odd, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in odd.items()):
            original.update(odd)
        else:
            problems.append(f"{ORIGINAL_HEADERS} is not a JSON object of strings")
    if ORIGINAL_MSG_ID in headers:
        original[MSG_ID_HEADER] = headers[ORIGINAL_MSG_ID]
    return original


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
    """The original headers as the message carried them (``Nats-*`` ones and odd names included)."""
    timestamp: _dt.datetime | None = None
    """When it was dead-lettered."""
    malformed: str | None = None
    """Why this is not a letter this package wrote (a field missing or not parsing); ``None`` if it is one.
    A malformed letter is listed, shown and purged, never replayed."""
    partial: bool = False
    """Whether the letter holds only part of the original (the original was larger than a letter may be);
    its ``stream`` and ``sequence`` say where the original was. Never replayed."""
    original_size: int | None = None
    """The size of the original body when the letter holds only its first bytes."""

    @classmethod
    def from_stored(
        cls,
        seq: int,
        body: bytes,
        headers: dict[str, str],
        timestamp: _dt.datetime | None = None,
        *,
        subject: str | None = None,
    ) -> DeadLetter:
        """Read a dead letter back from a stored message's body and headers (and its ``subject`` in the
        dead-letter stream, checked against them). Never raises: what does not parse is :attr:`malformed`."""
        problems: list[str] = []
        for name in (ORIGINAL_SUBJECT, ORIGINAL_STREAM, CONSUMER):
            if not headers.get(name):
                problems.append(f"{name} is missing")
        stream, consumer = headers.get(ORIGINAL_STREAM, ""), headers.get(CONSUMER, "")
        if subject is not None and subject != dead_letter_subject(stream, consumer):
            problems.append(f"stored on {subject!r}, not on the subject of its stream and consumer")
        sequence = _whole(headers, ORIGINAL_SEQUENCE, problems)
        attempts = _whole(headers, ATTEMPTS, problems, required=False)
        size = headers.get(ORIGINAL_SIZE)
        return cls(
            seq=seq,
            subject=headers.get(ORIGINAL_SUBJECT, ""),
            stream=stream,
            sequence=sequence,
            consumer=consumer,
            attempts=attempts,
            error_type=headers.get(ERROR_TYPE, ""),
            error=headers.get(ERROR, ""),
            body=body,
            headers=_original_headers(headers, problems),
            timestamp=timestamp,
            malformed="; ".join(problems) or None,
            partial=TRUNCATED in headers,
            original_size=int(size) if size is not None and size.isdigit() else None,
        )

    @property
    def replay_msg_id(self) -> str:
        """The msg id of this letter's replay: from its sequence and the time the stream stored it, both
        given by the server, so unique across a re-creation of the dead-letter stream (sequences restart),
        and the same for a second replay of the same letter (stored once)."""
        if self.timestamp is None:
            return f"replay-{DEAD_LETTER_STREAM}-{self.seq}"
        micros = (self.timestamp - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)) // _dt.timedelta(microseconds=1)
        return f"replay-{DEAD_LETTER_STREAM}-{self.seq}-{micros}"

    @property
    def replay_ttl(self) -> float | None:
        """The original ``Nats-TTL`` in seconds, which a replay restores; ``None`` if it had none (or one
        that does not parse)."""
        value = self.headers.get("Nats-TTL")
        return _ttl_seconds(value) if value is not None else None

    def replay(self) -> Message:
        """The message a replay publishes: the original body and the original headers a publisher may set
        (neither ``Nats-*`` nor ``Dlq-*`` ones, nor odd names), the consumer it is meant for in
        :data:`REPLAY_CONSUMER`, and a msg id of its own (:attr:`replay_msg_id`)."""
        headers = {k: v for k, v in self.headers.items() if _plain_header(k) and "\r" not in v and "\n" not in v}
        headers[REPLAY_CONSUMER] = self.consumer
        headers[MSG_ID_HEADER] = self.replay_msg_id
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
            "malformed": self.malformed,
            "partial": self.partial,
            "original_size": self.original_size,
        }
