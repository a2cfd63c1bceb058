"""Delayed delivery (``delay=``/``at=``): when a message is due, and the subject its schedule is kept on.

A delayed message is stored at once as a *message schedule* (ADR-51, nats-server 2.12): a message on a
schedule subject of the target's stream that the server publishes to the target at its time, then purges,
even if no app instance runs meanwhile. A schedule subject holds one schedule (a new one replaces it), so
each delayed message gets a subject of its own, made from a wildcard of the stream's subjects by
:func:`schedule_subject`. Checked here for both backends; the wire format lives in the JetStream backend.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence

from ..errors import InvalidArgumentError, NoStreamError

SCHEDULE_TOKEN = "_schedule"
"""The token that marks a schedule subject (``orders._schedule.<id>``)."""


def due(delay: object, at: object, now: _dt.datetime) -> tuple[_dt.datetime, float] | None:
    """``(when, seconds from now)`` for ``delay`` (seconds or a ``timedelta``) or ``at`` (an aware
    ``datetime``); ``None`` when neither is given."""
    if delay is None and at is None:
        return None
    if delay is not None and at is not None:
        raise InvalidArgumentError("give either delay or at, not both")
    if delay is not None:
        if isinstance(delay, _dt.timedelta):
            seconds = delay.total_seconds()
        elif isinstance(delay, int | float) and not isinstance(delay, bool) and math.isfinite(delay):
            seconds = float(delay)
        else:
            raise InvalidArgumentError(f"delay must be a timedelta or a number of seconds, got {delay!r}")
        if seconds <= 0:
            raise InvalidArgumentError(f"delay must be positive, got {delay!r}")
        return now + _dt.timedelta(seconds=seconds), seconds
    if not isinstance(at, _dt.datetime):
        raise InvalidArgumentError(f"at must be a datetime, got {at!r}")
    if at.tzinfo is None or at.tzinfo.utcoffset(at) is None:
        raise InvalidArgumentError(f"at must be timezone-aware (a naive datetime is ambiguous), got {at!r}")
    seconds = (at - now).total_seconds()
    if seconds <= 0:
        raise InvalidArgumentError(f"at must be in the future, got {at.isoformat()} (now {now.isoformat()})")
    return at.astimezone(_dt.UTC), seconds


def schedule_subject(patterns: Sequence[str], unique: str) -> str | None:
    """A subject captured by a stream with subjects ``patterns`` for one schedule (``unique`` a token of
    its own); ``None`` if the stream has no wildcard subject to make one from."""
    for wanted in (">", "*"):
        for pattern in patterns:
            tokens = pattern.split(".")
            if wanted not in tokens:
                continue
            if tokens[-1] == ">":
                head = [SCHEDULE_TOKEN if token == "*" else token for token in tokens[:-1]]
                return ".".join([*head, SCHEDULE_TOKEN, unique])
            last = max(index for index, token in enumerate(tokens) if token == "*")
            filled = [SCHEDULE_TOKEN if token == "*" else token for token in tokens]
            filled[last] = f"{SCHEDULE_TOKEN}-{unique}"
            return ".".join(filled)
    return None


def unschedulable(subject: str, stream: str) -> NoStreamError:
    """The error for a delayed message whose stream has no wildcard subject to keep its schedule on."""
    return NoStreamError(
        subject,
        f"stream {stream!r} has no wildcard subject to keep schedules on: add one such as "
        f"'{subject.split('.')[0]}.{SCHEDULE_TOKEN}.>'",
    )
