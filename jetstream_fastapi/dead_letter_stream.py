"""The dead-letter stream on a real server: declare it, store a terminated message, list, replay.

The format of a dead letter (subject, headers) lives in :mod:`jetstream_fastapi.deadletters`, shared
with the in-memory broker.
"""

from __future__ import annotations

import base64

from nats.js.api import RawStreamMsg, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from nats.js.manager import JetStreamManager

from .deadletters import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM, DeadLetter
from .publishing import parse_headers

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
        letters.append(DeadLetter.from_stored(raw.seq, raw.data or b"", _headers(raw), raw.time))
        seq = raw.seq + 1
    return letters


async def get_dead_letter(jsm: JetStreamManager, seq: int) -> DeadLetter:
    """Dead letter ``seq``; ``LookupError`` if there is none."""
    try:
        raw = await jsm.get_msg(DEAD_LETTER_STREAM, seq=seq)
    except NotFoundError:
        raise LookupError(f"no dead letter with sequence {seq}") from None
    return DeadLetter.from_stored(seq, raw.data or b"", _headers(raw), raw.time)


def _headers(raw: RawStreamMsg) -> dict[str, str]:
    # nats-py's get_msg parses headers with the e-mail parser (non-ASCII values become email.header.Header
    # objects); its raw block, base64 in the API answer, is parsed here as UTF-8 instead.
    return parse_headers(base64.b64decode(raw.hdrs)) if raw.hdrs else {}
