"""Publish conditions in memory: the expectations and the per-message TTL, as nats-server 2.15 applies them.

Measured on the server (see :mod:`~jetstream_fastapi.backends.jetstream.publish_options`): the expectations are
checked before the duplicate window; the stream's last sequence counts deleted messages, the subject's does
not; a TTL needs the stream's ``allow_msg_ttl``. An expired message is removed from the stream and from the
consumers that have not delivered it yet, on the server's clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...core.delayed import schedule_subject, unschedulable
from ...core.publish_options import PublishConditions
from ...driver import MSG_ID_HEADER, PubAck
from ...errors import BatchStoredError, JetStreamError, PublishConflictError, StreamFlagError

if TYPE_CHECKING:
    from ..base import Outgoing
    from .server import MemoryServer, MemoryStream, StoredMessage


def check_conditions(stream: MemoryStream, subject: str, conditions: PublishConditions) -> None:
    """Raise what the server answers when ``conditions`` do not hold for a message to ``subject``."""
    if conditions.delay is not None and not stream.allow_msg_schedules:
        raise StreamFlagError(subject, stream.name, "message schedules", "allow_msg_schedules", 400)
    if conditions.ttl is not None and not stream.allow_msg_ttl:
        raise StreamFlagError(subject, stream.name, "per-message TTLs", "allow_msg_ttl", 400)
    if conditions.expected_stream is not None and conditions.expected_stream != stream.name:
        raise PublishConflictError(subject, "expected stream does not match", 400, stream=stream.name)
    last = len(stream.messages)
    if conditions.expected_last_sequence is not None and conditions.expected_last_sequence != last:
        raise PublishConflictError(
            subject, f"wrong last sequence: {last}", 400, current_sequence=last, stream=stream.name
        )
    if conditions.expected_last_msg_id is not None:
        last_id = stream.messages[-1].headers.get(MSG_ID_HEADER, "") if stream.messages else ""
        if conditions.expected_last_msg_id != last_id:
            raise PublishConflictError(subject, f"wrong last msg ID: {last_id}", 400, stream=stream.name)
    if conditions.expected_last_subject_sequence is not None:
        on_subject = last_subject_sequence(stream, subject)
        if conditions.expected_last_subject_sequence != on_subject:
            raise PublishConflictError(
                subject, f"wrong last sequence: {on_subject}", 400, current_sequence=on_subject, stream=stream.name
            )


def last_subject_sequence(stream: MemoryStream, subject: str) -> int:
    """The sequence of the last message still in ``stream`` on ``subject``; 0 if none."""
    for message in reversed(stream.messages):
        if message.subject == subject and message.seq not in stream.deleted:
            return message.seq
    return 0


def expire_later(server: MemoryServer, stream: MemoryStream, stored: StoredMessage, ttl: float) -> None:
    """Remove ``stored`` from ``stream`` after ``ttl`` seconds of the server's clock."""

    def expire() -> None:
        stream.deleted.add(stored.seq)
        for consumer in server.consumers.values():
            if consumer.stream is stream and stored in consumer.waiting:
                consumer.waiting.remove(stored)

    server.clock.call_later(ttl, expire)


def schedule(server: MemoryServer, stream: MemoryStream, message: Outgoing, delay: float) -> StoredMessage:
    """Keep ``message`` as a schedule in ``stream`` (with a sequence, as on a server; no consumer sees
    it) and, ``delay`` seconds later on the server's clock, purge it and store its copy on the target
    subject: without its msg id, with the ``Nats-Scheduler`` header naming the schedule, as the server."""
    subject = schedule_subject(stream.subjects, uuid.uuid4().hex)
    if subject is None:
        raise unschedulable(message.subject, stream.name)
    held = server.append(stream, subject, message.body, message.headers, deliver=False)
    stream.schedules.add(held.seq)

    def fire() -> None:
        stream.schedules.discard(held.seq)
        stream.deleted.add(held.seq)
        headers = {key: value for key, value in message.headers.items() if key != MSG_ID_HEADER}
        headers.update({"Nats-Scheduler": subject, "Nats-Schedule-Next": "purge"})
        server.append(stream, message.subject, message.body, headers)

    server.clock.call_later(delay, fire)
    return held


def store_batch(
    server: MemoryServer, stream: MemoryStream, batch_id: str, messages: Sequence[Outgoing]
) -> list[PubAck]:
    """Store ``messages`` all together or not at all, as the server commits an atomic batch: each message's
    expectations see the batch's earlier messages; a msg id stored before means a retried batch."""
    if not stream.allow_atomic:
        raise StreamFlagError(messages[0].subject, stream.name, "atomic batches", "allow_atomic", 400)
    now = server.clock.now()
    for message in messages:
        seen = stream.dedupe.get(message.headers[MSG_ID_HEADER])
        if seen is not None and now - seen[1] < server.duplicate_window:
            raise BatchStoredError(batch_id, stream.name)
    start = len(stream.messages)
    try:
        for message in messages:
            if message.conditions is not None:
                check_conditions(stream, message.subject, message.conditions)
            server.append(stream, message.subject, message.body, message.headers, deliver=False)
    except JetStreamError:
        del stream.messages[start:]  # nothing of the batch is stored
        raise
    acks: list[PubAck] = []
    for stored in stream.messages[start:]:
        stream.dedupe[stored.headers[MSG_ID_HEADER]] = (stored.seq, now)
        server.deliver(stream, stored)
        acks.append(PubAck(stream=stream.name, seq=stored.seq))
    return acks
