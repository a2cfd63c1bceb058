"""Checks for subjects and queue names, subject matching, and the auto-provisioned stream rule.

Everything here runs before a request reaches the server, so that bad input fails with a specific error.
Imports nothing from ``nats``.
"""

from __future__ import annotations

import itertools
import re

from ..errors import InvalidArgumentError, InvalidQueueError, InvalidSubjectError, NoStreamError
from .deadletters import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM

# Characters NATS forbids in consumer (and so queue) names; whitespace is checked separately.
_BAD_NAME_CHARS = frozenset(".*>/\\")
_WHITESPACE = re.compile(r"\s")
MAX_NAME_LENGTH = 255

DEFAULT_MAX_CONTROL_LINE = 4096
"""The server's default ``max_control_line``: the longest protocol line it reads (``HPUB <subject> <reply>
<header size> <total size>``); a longer one closes the client's connection, and nats-py, which buffers what
it could not send, sends the same line again after each reconnect."""
# nats-server 2.15 does not announce max_control_line in its INFO (only max_payload), and nats-py has no
# accessor for it: the protocol default is the limit a client can know. A server configured lower is rare.
DEFAULT_INBOX_PREFIX = "_INBOX"
"""The prefix of nats-py's inboxes (its ``inbox_prefix`` connect option), so of ``request()``'s reply addresses."""
MAX_INBOX_PREFIX = 128
"""The longest inbox prefix accepted: a reply address stays far below any control line."""
# "HPUB", the spaces, CRLF and the two sizes at their longest (20 digits each).
_LINE_OVERHEAD = len("HPUB") + 4 + 2 + 2 * 20
# The reply subject of a publish's PubAck: "<inbox prefix>.<22-char nuid>.<counter of up to 20 digits>".
_PUBACK_INBOX = 1 + 22 + 1 + 20


def control_line_length(subject: str, reply: str = "") -> int:
    """Bytes of the ``HPUB`` line that sends a message to ``subject`` (answers go to ``reply``), its sizes at
    their longest: what the server's ``max_control_line`` bounds."""
    return _LINE_OVERHEAD + len(subject.encode()) + len(reply.encode())


def max_subject_length(max_control_line: int, inbox_prefix: str) -> int:
    """The longest subject a publish can carry: the control line less the PubAck's reply subject and sizes."""
    return max_control_line - _LINE_OVERHEAD - len(inbox_prefix) - _PUBACK_INBOX


def check_subject(subject: str, *, wildcards: bool, max_length: int | None = None) -> str:
    """Return ``subject`` if it is valid; raise :class:`InvalidSubjectError` otherwise.

    Publishing needs a literal subject (``wildcards=False``); subscribing accepts ``*`` as a whole token
    and ``>`` as the whole last token. ``max_length`` (see :func:`max_subject_length`) bounds its bytes:
    a longer subject would close the connection instead of failing alone.
    """
    if not isinstance(subject, str) or not subject:
        raise InvalidSubjectError(f"subject must be a non-empty string, got {subject!r}")
    if max_length is not None and len(subject.encode()) > max_length:
        raise InvalidSubjectError(
            f"subject {subject[:40]!r}... is {len(subject.encode())} bytes long; the server's control line "
            f"(max_control_line, with the reply subject and sizes) leaves room for at most {max(max_length, 0)}"
        )
    if _WHITESPACE.search(subject):
        raise InvalidSubjectError(f"subject {subject!r} contains whitespace")
    tokens = subject.split(".")
    last = len(tokens) - 1
    for index, token in enumerate(tokens):
        if not token:
            raise InvalidSubjectError(f"subject {subject!r} has an empty token (leading, trailing or double '.')")
        if token in ("*", ">"):
            if not wildcards:
                raise InvalidSubjectError(f"cannot publish to {subject!r}: wildcards are for subscribing only")
            if token == ">" and index != last:
                raise InvalidSubjectError(f"subject {subject!r}: '>' may only be the last token")
        elif "*" in token or ">" in token:
            raise InvalidSubjectError(f"subject {subject!r}: a wildcard must be a whole token")
    return subject


def check_inbox_prefix(prefix: object) -> str:
    """Return ``prefix`` if it can prefix the inboxes of requests (a literal subject, not ``$...``, at most
    :data:`MAX_INBOX_PREFIX` bytes); raise :class:`~jetstream_fastapi.errors.InvalidArgumentError` otherwise."""
    if isinstance(prefix, bytes):  # nats-py takes either
        prefix = prefix.decode("utf-8", "replace")
    if not isinstance(prefix, str):
        raise InvalidArgumentError(f"inbox_prefix must be a string, got {prefix!r}")
    try:
        check_subject(prefix, wildcards=False)
    except InvalidSubjectError as error:
        raise InvalidArgumentError(f"inbox_prefix {prefix!r} is not a literal subject: {error}") from None
    if prefix.startswith("$"):
        raise InvalidArgumentError(f"inbox_prefix {prefix!r} may not start with '$' (the server's own subjects)")
    if len(prefix.encode()) > MAX_INBOX_PREFIX:
        raise InvalidArgumentError(
            f"inbox_prefix is {len(prefix.encode())} bytes long; the limit is {MAX_INBOX_PREFIX}"
        )
    return prefix


def check_queue(queue: str) -> str:
    """Return ``queue`` if it can name a durable consumer; raise :class:`InvalidQueueError` otherwise."""
    if not isinstance(queue, str) or not queue:
        raise InvalidQueueError(f"queue must be a non-empty string, got {queue!r}")
    if _WHITESPACE.search(queue) or not _BAD_NAME_CHARS.isdisjoint(queue):
        raise InvalidQueueError(
            f"queue {queue!r} cannot name a durable consumer: it may not contain whitespace, '.', '*', '>', '/' or '\\'"
        )
    if len(queue) > MAX_NAME_LENGTH:
        raise InvalidQueueError(f"queue name is {len(queue)} characters long; the limit is {MAX_NAME_LENGTH}")
    return queue


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether literal ``subject`` matches ``pattern`` (which may use ``*`` and ``>``)."""
    if pattern == subject:
        return True
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == ">":
            return len(subject_tokens) > index
        if index >= len(subject_tokens) or (token != "*" and token != subject_tokens[index]):
            return False
    return len(pattern_tokens) == len(subject_tokens)


def subjects_overlap(first: str, second: str) -> bool:
    """Whether two subject patterns can match a common subject (which stream a wildcard filter reads)."""
    for a, b in itertools.zip_longest(first.split("."), second.split(".")):
        if a is None or b is None:
            return False  # one pattern is longer, and ">" needs at least one more token
        if a == ">" or b == ">":
            return True
        if a != b and "*" not in (a, b):
            return False
    return True


def provisioned_stream(subject: str) -> tuple[str, list[str]] | None:
    """The stream auto-provisioning creates for ``subject``: name and subjects, or ``None`` if it cannot.

    As in the Go driver, the stream is named after the first token, upper-cased, and captures
    ``<token>`` and ``<token>.>``, so one stream serves every subject under the token. A subject whose
    first token is a wildcard cannot be provisioned.
    """
    token = subject.split(".", 1)[0]
    if token in ("*", ">") or token == DEAD_LETTER_PREFIX:
        # Dead letters belong in DEAD_LETTERS, recreated when missing: never in a stream of their own.
        return None
    name = token.upper()
    if not name.replace("-", "").replace("_", "").isalnum():
        # Stream names share the consumer-name restrictions; only plain tokens make a safe name.
        return None
    return name, [token, f"{token}.>"]


def stream_to_provision(subject: str, *, auto_provision: bool) -> tuple[str, list[str]]:
    """The stream to create for ``subject`` that no stream captures (see :func:`provisioned_stream`), or
    :class:`~jetstream_fastapi.errors.NoStreamError` saying why none may be: both backends ask this."""
    if not auto_provision:
        raise NoStreamError(subject, "declare a stream for it (streams=[...]) or enable auto_provision")
    plan = provisioned_stream(subject)
    if plan is None and subject.split(".", 1)[0] == DEAD_LETTER_PREFIX:
        raise NoStreamError(subject, f"the dead-letter stream {DEAD_LETTER_STREAM} is missing")
    if plan is None:
        raise NoStreamError(subject, "auto-provisioning needs a literal first token; declare a stream")
    return plan
