"""The dead-letter stream on a real server: how it is declared.

The format of a dead letter (subject, headers) lives in :mod:`jetstream_fastapi.core.deadletters`, and
the front lists, replays and purges them through the backend's ``read`` and ``delete``.
"""

from __future__ import annotations

from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from ...core.deadletters import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM

DEAD_LETTER_CONFIG = StreamConfig(
    name=DEAD_LETTER_STREAM,
    subjects=[f"{DEAD_LETTER_PREFIX}.>"],
    retention=RetentionPolicy.LIMITS,
    storage=StorageType.FILE,
)
"""Limits retention and file storage: dead letters stay until someone inspects, replays or purges them."""
