"""Dead-letter admin over a backend: list, read, replay checks and purge, for the broker's front.

The front (:class:`~jetstream_fastapi.core.broker.BaseBroker`) checks the arguments and maps errors;
these functions walk the dead-letter stream through the backend's ``read``/``delete``, so both backends
answer the same. A dead letter's subject is ``deadletter.<stream>.<consumer>`` and stream and consumer
names hold no ``.``, so a filter by original stream or consumer is a subject filter the store applies. A
letter may have been planted by anyone who can publish to ``deadletter.>``, so a replay trusts nothing in
it (:func:`replay_target`).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..backends.base import Backend, Stored
from ..errors import DeadLetterNotFoundError, DeadLetterReplayError, InvalidArgumentError, NoStreamError
from .deadletters import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM, DeadLetter
from .subjects import check_subject, subject_matches


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
    return DeadLetter.from_stored(stored.seq, stored.body, stored.headers, stored.time, subject=stored.subject)


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
