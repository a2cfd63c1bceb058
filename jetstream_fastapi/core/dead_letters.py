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
is listed with :attr:`~jetstream_fastapi.driver.DeadLetter.malformed` saying why, and is never replayed.

Listing, reading, purging and the checks before a replay walk the dead-letter stream through the backend's
``read``/``delete``, so both backends answer the same. A dead letter's subject is
``deadletter.<stream>.<consumer>`` and stream and consumer names hold no ``.``, so a filter by original
stream or consumer is a subject filter the store applies. A letter may have been planted by anyone who can
publish to ``deadletter.>``, so a replay trusts nothing in it (:func:`replay_target`).

Imports nothing from ``nats``: both brokers build and read dead letters with these functions.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..backends.base import Backend, Stored
from ..driver import DEAD_LETTER_PREFIX as DEAD_LETTER_PREFIX  # the contract's, imported from here too
from ..driver import DEAD_LETTER_STREAM as DEAD_LETTER_STREAM
from ..driver import MSG_ID_HEADER, DeadLetter, Message, PubAck
from ..driver import REPLAY_CONSUMER as REPLAY_CONSUMER
from ..errors import (
    DeadLetterNotFoundError,
    DeadLetterReplayError,
    InvalidArgumentError,
    JetStreamError,
    NoStreamError,
    PublishError,
    PublishTimeoutError,
)
from ..observability.logs import message_extra
from .front import Front
from .payloads import headers_size
from .subjects import check_subject, subject_matches

if TYPE_CHECKING:
    from .handling import Verdict
    from .processing import DeadLetterOutcome

logger = logging.getLogger("jetstream_fastapi")

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


def parse_letter(
    seq: int,
    body: bytes,
    headers: dict[str, str],
    timestamp: _dt.datetime | None = None,
    *,
    subject: str | None = None,
) -> DeadLetter:
    """Read a dead letter back from a stored message's body and headers (and its ``subject`` in the
    dead-letter stream, checked against them). Never raises: what does not parse is
    :attr:`~jetstream_fastapi.driver.DeadLetter.malformed`."""
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
    return DeadLetter(
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


def replay_ttl(letter: DeadLetter) -> float | None:
    """The original ``Nats-TTL`` of ``letter`` in seconds, which a replay restores; ``None`` if it had none
    (or one that does not parse)."""
    value = letter.headers.get("Nats-TTL")
    return _ttl_seconds(value) if value is not None else None


def replay_message(letter: DeadLetter) -> Message:
    """The message a replay of ``letter`` publishes: the original body and the original headers a publisher
    may set (neither ``Nats-*`` nor ``Dlq-*`` ones, nor odd names), the consumer it is meant for in
    :data:`~jetstream_fastapi.driver.REPLAY_CONSUMER`, and a msg id of its own
    (:attr:`~jetstream_fastapi.driver.DeadLetter.replay_msg_id`)."""
    headers = {k: v for k, v in letter.headers.items() if _plain_header(k) and "\r" not in v and "\n" not in v}
    headers[REPLAY_CONSUMER] = letter.consumer
    headers[MSG_ID_HEADER] = letter.replay_msg_id
    return Message(body=letter.body, headers=headers)


def letter_filter(stream: str | None, consumer: str | None) -> str:
    """The subject filter of the dead letters of ``stream`` and ``consumer`` (``None``: any)."""
    for name, value in (("stream", stream), ("consumer", consumer)):
        if value is not None and (not isinstance(value, str) or not value or any(c in value for c in ".*> \t")):
            raise InvalidArgumentError(f"{name} must be a stream or consumer name, got {value!r}")
    return f"{DEAD_LETTER_PREFIX}.{stream or '*'}.{consumer or '*'}"


def check_seq(seq: object) -> int:
    """``seq`` if it is a positive integer, else :class:`InvalidArgumentError`."""
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise InvalidArgumentError(f"seq must be a positive integer, got {seq!r}")
    return seq


def read_letter(stored: Stored) -> DeadLetter:
    """The dead letter in a message of the dead-letter stream (flagged malformed if it is not one)."""
    return parse_letter(stored.seq, stored.body, stored.headers, stored.time, subject=stored.subject)


def check_after(after: object) -> int:
    """The sequence a listing starts after: ``after`` (``None``: from the start) if a non-negative integer,
    else :class:`InvalidArgumentError`."""
    if after is None:
        return 0
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise InvalidArgumentError(f"after must be a non-negative integer (a dead letter's seq), got {after!r}")
    return after


def next_cursor(letters: list[DeadLetter], limit: int) -> int | None:
    """The ``after`` of the page that follows ``letters`` (a page of at most ``limit``): the last one's
    sequence when the page is full (more may follow), ``None`` when it is the last page."""
    return letters[-1].seq if letters and len(letters) >= limit else None


async def scan(backend: Backend, limit: int, subject: str, after: int = 0) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters on ``subject`` (a filter) with a sequence above ``after``: one read
    per letter, each the next one the stream holds on the filter, so at most ``limit`` letters are read."""
    letters: list[DeadLetter] = []
    seq = after + 1
    while len(letters) < limit:
        stored = await backend.read(DEAD_LETTER_STREAM, seq, subject=subject, next=True)
        if stored is None:
            break
        letters.append(read_letter(stored))
        seq = stored.seq + 1
    return letters


async def fetch(backend: Backend, seq: int) -> DeadLetter:
    """Dead letter ``seq``; :class:`DeadLetterNotFoundError` if there is none."""
    stored = await backend.read(DEAD_LETTER_STREAM, seq)
    # The dead-letter stream holds only dead letters, but a message published there by hand is not one.
    if stored is None or not stored.subject.startswith(f"{DEAD_LETTER_PREFIX}."):
        raise DeadLetterNotFoundError(seq)
    return read_letter(stored)


async def purge(backend: Backend, seqs: Iterable[int] | None, subject: str) -> int:
    """Delete the dead letters ``seqs`` (every one checked first: nothing is deleted if one is missing), or
    with ``seqs=None`` every dead letter on ``subject``; how many were deleted."""
    if seqs is not None:
        wanted = sorted({check_seq(seq) for seq in seqs})
        for seq in wanted:
            await fetch(backend, seq)
    else:
        wanted = []
        seq = 1
        while (stored := await backend.read(DEAD_LETTER_STREAM, seq, subject=subject, next=True)) is not None:
            wanted.append(stored.seq)
            seq = stored.seq + 1
    deleted = 0
    for seq in wanted:
        deleted += bool(await backend.delete(DEAD_LETTER_STREAM, seq))
    return deleted


def _refuse(letter: DeadLetter, reason: str) -> DeadLetterReplayError:
    return DeadLetterReplayError(letter.seq, reason)


def _check_subject(letter: DeadLetter) -> None:
    """A literal subject an app publishes to: never the server's API (``$...``), an inbox or a dead letter's."""
    subject = letter.subject
    try:
        check_subject(subject, wildcards=False)
    except InvalidArgumentError as error:
        raise _refuse(letter, str(error)) from None
    if subject.startswith("$") or subject.split(".", 1)[0] in ("_INBOX", DEAD_LETTER_PREFIX):
        raise _refuse(letter, f"its subject {subject!r} is not one messages are published to")


async def replay_target(backend: Backend, letter: DeadLetter) -> str:
    """The stream a replay of ``letter`` stores into, after checking that the letter can be replayed as it
    says: well formed and whole, its subject one that its original stream captures (for a key-ordered
    queue's partitioned stream: one its source stores and it sources), and its consumer still there.
    :class:`DeadLetterReplayError` otherwise, or :class:`NoStreamError` if the original stream is gone."""
    if letter.malformed:
        raise _refuse(letter, f"it is malformed ({letter.malformed})")
    if letter.partial:
        size = f"{len(letter.body)} of {letter.original_size} bytes"
        raise _refuse(letter, f"it is truncated ({size}; the original was {letter.stream}#{letter.sequence})")
    _check_subject(letter)
    if not await backend.has_stream(letter.stream):
        raise NoStreamError(
            letter.subject, f"dead letter {letter.seq} came from stream {letter.stream!r}, which no longer exists"
        )
    facts = await backend.stream_facts(letter.stream)
    target, patterns = letter.stream, facts.subjects
    if facts.source is not None and subject_matches(facts.source[1], letter.subject):
        target = facts.source[0]  # the source stores the replay, and the partitioned stream copies it
        patterns = (await backend.stream_facts(target)).subjects
    if not any(subject_matches(pattern, letter.subject) for pattern in patterns):
        raise _refuse(letter, f"stream {letter.stream!r} does not capture its subject {letter.subject!r}")
    if await backend.consumer_state(letter.stream, letter.consumer) is None:
        raise _refuse(letter, f"consumer {letter.consumer!r} of stream {letter.stream!r} no longer exists")
    return target


async def store_dead_letter(front: Front, message: Message, verdict: Verdict) -> DeadLetterOutcome:
    """Store a message about to be terminated in the dead-letter stream (recreated if it was deleted), through
    ``front`` (the broker whose consumer terminates it).
    ``"retry"`` when that failed for a reason that may pass (the
    :class:`~jetstream_fastapi.core.processing.Processor` then holds the message and tries again),
    ``"lost"`` when the server refused it for good (the message is terminated, counted, logged)."""
    delivery = message.delivery
    assert delivery is not None
    letter = dead_letter(message, verdict.error, front._backend.max_payload)
    subject = dead_letter_subject(delivery.stream, delivery.consumer)
    msg_id = dead_letter_msg_id(delivery.stream, delivery.sequence, delivery.consumer)
    try:
        try:
            # Only into DEAD_LETTERS: never a stream provisioned for the subject, or another one capturing it.
            await front.publish(subject, letter, msg_id=msg_id, expected_stream=DEAD_LETTER_STREAM)
        except NoStreamError:  # deleted (an operator resetting it): recreated, as consumers are
            await front._below(front._backend.ensure_dead_letter_stream())
            await front.publish(subject, letter, msg_id=msg_id, expected_stream=DEAD_LETTER_STREAM)
    except JetStreamError as error:
        where = (delivery.stream, delivery.sequence, message.subject, front._backend.describe(error))
        if permanent(error):
            logger.error(  # noqa: TRY400 - a traceback could carry secrets; describe() redacts
                "the dead letter of %s#%d (%s) is lost: the server refused it for good, so the message is "
                "terminated without one: %s",
                *where,
                extra=message_extra(message),
            )
            return "lost"
        logger.error(  # noqa: TRY400 - a traceback could carry secrets; describe() redacts
            "could not dead-letter %s#%d (%s); it is held and retried: %s", *where, extra=message_extra(message)
        )
        return "retry"
    return "stored"


class DeadLetters(Front):
    """The broker's management plane of dead letters (:class:`~jetstream_fastapi.driver.DeadLetterAdmin`):
    list, read, replay, purge; plus :meth:`publish_dead_letter` for the library's own producers. (A
    consumer stores a terminated message's letter with :func:`store_dead_letter`.)"""

    async def list_dead_letters(
        self,
        limit: int = 100,
        *,
        stream: str | None = None,
        consumer: str | None = None,
        after: int | None = None,
    ) -> list[DeadLetter]:
        """The oldest ``limit`` messages in the dead-letter stream, with why they died; only those from the
        original ``stream`` and terminated by ``consumer`` when given, and only those with a sequence above
        ``after`` (a cursor: the last ``seq`` of the page before). At most ``limit`` letters are read from
        the server::

            page = await broker.list_dead_letters(50)
            while len(page) == 50:
                page = await broker.list_dead_letters(50, after=page[-1].seq)
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise InvalidArgumentError(f"limit must be a non-negative integer, got {limit!r}")
        start = check_after(after)
        subject = letter_filter(stream, consumer)
        self._require()
        return await self._below(scan(self._backend, limit, subject, start))

    async def dead_letter(self, seq: int) -> DeadLetter:
        """Dead letter ``seq``; :class:`DeadLetterNotFoundError` if there is none."""
        check_seq(seq)
        self._require()
        return await self._below(fetch(self._backend, seq))

    async def replay_dead_letter(self, seq: int) -> PubAck:
        """Publish dead letter ``seq`` again to its original subject, for the consumer that dead-lettered it
        only, then delete it from the dead-letter stream.

        The replay carries the original body and headers (the TTL restored; no ``Nats-*`` instruction), a
        msg id of its own, and :data:`~jetstream_fastapi.driver.REPLAY_CONSUMER` naming the consumer:
        this library's other consumers of the subject ack it without running their handler. It is stored
        only into the letter's own stream (never a provisioned one), and only if the letter is well formed
        and whole, its subject captured by that stream and its consumer still there:
        :class:`DeadLetterReplayError` otherwise, :class:`NoStreamError` if the stream is gone (nothing is
        published then), :class:`DeadLetterNotFoundError` if there is no such letter. If the server answers
        ``duplicate`` (this replay was stored before), the letter is kept and the PubAck says ``duplicate``.
        """
        letter = await self.dead_letter(seq)
        stream = await self._below(replay_target(self._backend, letter))
        replay = replay_message(letter)
        ack = await self.publish(
            letter.subject, replay, msg_id=replay.msg_id, ttl=replay_ttl(letter), expected_stream=stream
        )
        if ack.duplicate:
            logger.warning("dead letter %d was replayed before (duplicate): kept, nothing stored", seq)
            return ack
        await self._below(self._backend.delete(DEAD_LETTER_STREAM, seq))
        return ack

    async def purge_dead_letters(
        self, seqs: Iterable[int] | None = None, *, stream: str | None = None, consumer: str | None = None
    ) -> int:
        """Delete dead letters for good: those numbered ``seqs`` (all checked first; if one is missing,
        :class:`DeadLetterNotFoundError` and nothing is deleted), or every one (from the original ``stream``,
        terminated by ``consumer``, when given). Returns how many were deleted."""
        if seqs is not None and (stream is not None or consumer is not None):
            raise InvalidArgumentError("give either seqs or the stream/consumer filter, not both")
        subject = letter_filter(stream, consumer)
        wanted = None if seqs is None else [check_seq(seq) for seq in seqs]
        self._require()
        return await self._below(purge(self._backend, wanted, subject))

    async def publish_dead_letter(
        self, message: Message, error: BaseException, *, source: str, consumer: str, msg_id: str
    ) -> PubAck:
        """Store ``message`` (its ``subject``, body and headers) as a dead letter of ``source`` and
        ``consumer`` with why it died, for producers of the library's own (the outbox relay) whose messages
        never reached a stream: it is listed by ``list_dead_letters(stream=source, consumer=consumer)`` and
        replayed to its subject like any other. ``msg_id`` stores a retried dead-lettering once."""
        letter_filter(source, consumer)  # the same name rules as the filter that lists them
        self._require()
        await self._below(self._backend.ensure_dead_letter_stream())
        letter = Message(body=message.body, headers=dead_letter_headers(message, error))
        return await self.publish(dead_letter_subject(source, consumer), letter, msg_id=msg_id)
