"""Publish conditions on the wire: the ``Nats-TTL`` and ``Nats-Expected-*`` headers, and the server's
refusals of them as the library's errors.

As measured on nats-server 2.15: a stream without ``allow_msg_ttl`` answers ``10166 per-message TTL is
disabled``; a failed sequence expectation ``10071 wrong last sequence: N`` (N the current sequence); a
failed msg id expectation ``10070 wrong last msg ID: <id>``; a wrong stream ``10060``. The expectations are
checked before the duplicate window: a retry of a stored message with an expectation gets 10071 too.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from ...core.delayed import schedule_subject, unschedulable
from ...core.payloads import headers_size
from ...core.publish_options import PublishConditions
from ...errors import PayloadTooLargeError, PublishConflictError, PublishError, StreamFlagError
from ..base import Outgoing
from .streams import StreamRegistry

_TTL_DISABLED = 10166
_SCHEDULES_DISABLED = 10188
_ATOMIC_DISABLED = 10174
SCHEDULE_HEADER = "Nats-Schedule"
SCHEDULE_TARGET_HEADER = "Nats-Schedule-Target"
_WRONG_LAST_SEQUENCE = 10071
_WRONG_LAST_MSG_ID = 10070
_WRONG_STREAM = 10060
_CURRENT = re.compile(r"wrong last sequence: (\d+)")


def wire_headers(conditions: PublishConditions) -> dict[str, str]:
    """The headers that ask the server for ``conditions`` (for a schedule, see :func:`scheduled`)."""
    headers: dict[str, str] = {}
    if conditions.ttl is not None:
        headers["Nats-TTL"] = f"{round(conditions.ttl * 1000)}ms"
    if conditions.expected_stream is not None:
        headers["Nats-Expected-Stream"] = conditions.expected_stream
    if conditions.expected_last_sequence is not None:
        headers["Nats-Expected-Last-Sequence"] = str(conditions.expected_last_sequence)
    if conditions.expected_last_subject_sequence is not None:
        headers["Nats-Expected-Last-Subject-Sequence"] = str(conditions.expected_last_subject_sequence)
    if conditions.expected_last_msg_id is not None:
        headers["Nats-Expected-Last-Msg-Id"] = conditions.expected_last_msg_id
    return headers


def with_wire_headers(message: Outgoing, max_payload: int) -> Outgoing:
    """``message`` with the headers of its conditions (itself if it has none), checked against the limit
    again: the front counted the headers it knew of."""
    conditions = message.conditions
    if conditions is None or conditions.deliver_at is not None:
        return message
    headers = {**message.headers, **wire_headers(conditions)}
    size = len(message.body) + headers_size(headers)
    if size > max_payload:
        raise PayloadTooLargeError(message.subject, size, max_payload)
    return Outgoing(message.subject, message.body, headers, conditions)


def publish_error(subject: str, response: dict[str, Any]) -> PublishError:
    """The library's error for a PubAck carrying ``error`` (never retried by the caller)."""
    error = response["error"]
    description = str(error.get("description", error))
    code = error.get("code")
    err_code = error.get("err_code")
    if err_code == _TTL_DISABLED:
        return StreamFlagError(subject, str(response.get("stream", "?")), "per-message TTLs", "allow_msg_ttl", code)
    if err_code == _SCHEDULES_DISABLED:
        name = str(response.get("stream", "?"))
        return StreamFlagError(subject, name, "message schedules", "allow_msg_schedules", code)
    if err_code == _ATOMIC_DISABLED:
        return StreamFlagError(subject, str(response.get("stream", "?")), "atomic batches", "allow_atomic", code)
    if err_code in (_WRONG_LAST_SEQUENCE, _WRONG_LAST_MSG_ID, _WRONG_STREAM):
        found = _CURRENT.search(description)
        current = int(found.group(1)) if found else None
        stream = response.get("stream")
        return PublishConflictError(
            subject, description, code, current_sequence=current, stream=stream if isinstance(stream, str) else None
        )
    return PublishError(subject, description, code)


async def scheduled(message: Outgoing, registry: StreamRegistry, max_payload: int) -> Outgoing:
    """``message`` as the schedule that delivers it at its time: on a subject of its own in the target's
    stream, with the ``Nats-Schedule: @at <time>`` and ``Nats-Schedule-Target`` headers (ADR-51)."""
    conditions = message.conditions
    assert conditions is not None and conditions.deliver_at is not None
    stream = await registry.stream_for(message.subject)
    config = await registry.config_of(stream)
    if not config.allow_msg_schedules:
        raise StreamFlagError(message.subject, stream, "message schedules", "allow_msg_schedules")
    subject = schedule_subject(config.subjects or [], uuid.uuid4().hex)
    if subject is None:
        raise unschedulable(message.subject, stream)
    when = conditions.deliver_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    headers = {**message.headers, SCHEDULE_HEADER: f"@at {when}", SCHEDULE_TARGET_HEADER: message.subject}
    size = len(message.body) + headers_size(headers)
    if size > max_payload:
        raise PayloadTooLargeError(message.subject, size, max_payload)
    return Outgoing(subject, message.body, headers, None)
