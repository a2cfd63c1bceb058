"""Turning one ``publish`` call into an :class:`~jetstream_fastapi.backends.base.Outgoing`: the checks that
run before anything is sent (subject and its length on the wire, payload, headers and their total size, msg
id, size with headers) and the msg id itself.

A message gets a msg id of a per-broker random prefix and a counter (unique without a uuid per message), so
that the backend's own retries of a transient failure are stored once.
"""

from __future__ import annotations

import uuid

from ..backends.base import Outgoing
from ..driver import MSG_ID_HEADER, Payload
from ..errors import InvalidArgumentError, InvalidHeaderError, PayloadTooLargeError
from .payloads import MAX_HEADERS_SIZE, check_msg_id, coerce_message, headers_size
from .subjects import check_subject

_MSG_ID_ONLY = len(b"NATS/1.0\r\n\r\n") + len(MSG_ID_HEADER) + 4
# Subjects already checked: the usual app publishes to a handful, and the check costs a microsecond or two.
_CHECKED_SUBJECTS_LIMIT = 4096


def deadline(timeout: float | None, default: float) -> float:
    """The total deadline of a publish: ``timeout``, checked, or the broker's default."""
    if timeout is None:
        return default
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


class Preparer:
    """Checks and encodes the messages of one broker, and numbers its msg ids."""

    def __init__(self, max_subject: int) -> None:
        self.max_subject = max_subject
        """The longest subject in bytes (see :func:`~jetstream_fastapi.core.subjects.max_subject_length`)."""
        self._checked: set[str] = set()
        self._id_prefix = f"{uuid.uuid4().hex}-"
        self._id_counter = 0

    def forget(self) -> None:
        """Drop the subjects checked so far (the broker disconnected)."""
        self._checked.clear()

    def prepare(
        self, subject: str, message: Payload, msg_id: str | None, headers: dict[str, str] | None, max_payload: int
    ) -> Outgoing:
        """Check and encode one message, giving it a msg id; raises before anything is sent."""
        if subject not in self._checked:
            check_subject(subject, wildcards=False, max_length=self.max_subject)
            if len(self._checked) >= _CHECKED_SUBJECTS_LIMIT:
                self._checked.clear()
            self._checked.add(subject)
        body, merged = coerce_message(message, headers)
        if msg_id is None:
            self._id_counter += 1
            msg_id = f"{self._id_prefix}{self._id_counter}"
        else:
            check_msg_id(msg_id)
        merged[MSG_ID_HEADER] = msg_id
        # The limit covers headers and body; past it a NATS server drops the connection, so check here.
        # The usual case, the msg id as the only header, without walking the dict.
        header_size = headers_size(merged) if len(merged) > 1 else _MSG_ID_ONLY + len(msg_id)
        if header_size > MAX_HEADERS_SIZE:
            raise InvalidHeaderError(
                f"the headers of the message for {subject!r} are {header_size} bytes; JetStream stores at most "
                f"{MAX_HEADERS_SIZE} (64 KiB)"
            )
        size = len(body) + header_size
        if size > max_payload:
            raise PayloadTooLargeError(subject, size, max_payload)
        return Outgoing(subject, body, merged)
