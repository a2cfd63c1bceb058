"""Dead-letter admin over a backend: list, read, replay checks and purge, for the broker's front.

The front (:class:`~jetstream_fastapi.core.broker.BaseBroker`) checks the arguments and maps errors;
these functions walk the dead-letter stream through the backend's ``read``/``delete``, so both backends
answer the same. A dead letter's subject is ``deadletter.<stream>.<consumer>`` and stream and consumer
names hold no ``.``, so a filter by original stream or consumer is a subject filter the store applies.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..backends.base import Backend
from ..errors import DeadLetterNotFoundError, InvalidArgumentError
from .deadletters import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM, DeadLetter


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


async def scan(backend: Backend, limit: int, subject: str) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters on ``subject`` (a filter)."""
    letters: list[DeadLetter] = []
    seq = 1
    while len(letters) < limit:
        stored = await backend.read(DEAD_LETTER_STREAM, seq, subject=subject, next=True)
        if stored is None:
            break
        letters.append(DeadLetter.from_stored(stored.seq, stored.body, stored.headers, stored.time))
        seq = stored.seq + 1
    return letters


async def fetch(backend: Backend, seq: int) -> DeadLetter:
    """Dead letter ``seq``; :class:`DeadLetterNotFoundError` if there is none."""
    stored = await backend.read(DEAD_LETTER_STREAM, seq)
    # The dead-letter stream holds only dead letters, but a message published there by hand is not one.
    if stored is None or not stored.subject.startswith(f"{DEAD_LETTER_PREFIX}."):
        raise DeadLetterNotFoundError(seq)
    return DeadLetter.from_stored(stored.seq, stored.body, stored.headers, stored.time)


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
