"""The dead-letter stream on a real server: declare it, store a terminated message, list, replay.

The format of a dead letter (subject, headers) lives in :mod:`jetstream_fastapi.deadletters`, shared
with the in-memory broker.
"""

from __future__ import annotations

from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from nats.js.manager import JetStreamManager

from ...core.deadletters import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM, DeadLetter

DEAD_LETTER_CONFIG = StreamConfig(
    name=DEAD_LETTER_STREAM,
    subjects=[f"{DEAD_LETTER_PREFIX}.>"],
    retention=RetentionPolicy.LIMITS,
    storage=StorageType.FILE,
)
"""Limits retention and file storage: dead letters stay until someone inspects, replays or purges them."""


async def list_dead_letters(jsm: JetStreamManager, limit: int) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters (one request each: this is an admin path, not a hot one)."""
    letters: list[DeadLetter] = []
    seq = 1
    while len(letters) < limit:
        try:
            raw = await jsm.get_msg(DEAD_LETTER_STREAM, seq=seq, subject=f"{DEAD_LETTER_PREFIX}.>", next=True)
        except NotFoundError:  # past the last message, or no dead-letter stream yet
            break
        assert raw.seq is not None
        letters.append(DeadLetter.from_stored(raw.seq, raw.data or b"", dict(raw.headers or {}), raw.time))
        seq = raw.seq + 1
    return letters


async def get_dead_letter(jsm: JetStreamManager, seq: int) -> DeadLetter:
    """Dead letter ``seq``; ``LookupError`` if there is none."""
    try:
        raw = await jsm.get_msg(DEAD_LETTER_STREAM, seq=seq)
    except NotFoundError:
        raise LookupError(f"no dead letter with sequence {seq}") from None
    return DeadLetter.from_stored(seq, raw.data or b"", dict(raw.headers or {}), raw.time)
