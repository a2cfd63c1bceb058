"""The dead-letter stream on a real server: how it is declared.

The format of a dead letter (subject, headers) lives in :mod:`jetstream_fastapi.core.deadletters`, and
the front lists, replays and purges them through the backend's ``read`` and ``delete``.
"""

from __future__ import annotations

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from ...core.deadletters import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM
from ...core.options import StreamPolicy


def dead_letter_config(policy: StreamPolicy) -> StreamConfig:
    """Limits retention and file storage: dead letters stay until someone inspects, replays or purges them,
    or until they are older than the policy's ``dead_letter_max_age`` or the stream outgrows its
    ``dead_letter_max_bytes`` (the oldest go first), so that a flood of poison cannot fill the account."""
    return StreamConfig(
        name=DEAD_LETTER_STREAM,
        subjects=[f"{DEAD_LETTER_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=policy.dead_letter_max_age,
        max_bytes=policy.dead_letter_max_bytes,
        discard=DiscardPolicy.OLD,
    )
