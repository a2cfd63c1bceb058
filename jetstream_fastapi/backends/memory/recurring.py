"""Recurring schedules in memory, as nats-server 2.15 runs them, on the server's clock.

A message stored with a cron or ``@every`` ``Nats-Schedule`` header is kept (never delivered) and replaces
the schedule its subject held (the server adds ``Nats-Rollup: sub`` to a schedule). At every tick a copy
goes to its ``Nats-Schedule-Target``: its body and headers without the ``Nats-Schedule*``, msg id and
``Nats-Expected-*`` ones, with ``Nats-Scheduler`` (the schedule subject) and ``Nats-Schedule-Next`` (the
next tick). Cron ticks follow the wall clock in the schedule's time zone: with a
:class:`~jetstream_fastapi.clock.ManualClock` its ``wall`` time, moved by ``advance``. An ``@every`` schedule
ticks from when it was stored. A deleted or replaced schedule stops.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

from ...core.cron import (
    PREDEFINED,
    SCHEDULE_HEADER,
    TARGET_HEADER,
    TIME_ZONE_HEADER,
    TTL_HEADER,
    go_duration_seconds,
    next_cron,
)
from ...core.subjects import subject_matches
from ...driver import MSG_ID_HEADER
from ...errors import InvalidArgumentError, PublishError, StreamFlagError
from .publish_options import expire_later

if TYPE_CHECKING:
    from ..base import Outgoing
    from .server import MemoryServer, MemoryStream, StoredMessage


def is_recurring(headers: dict[str, str]) -> bool:
    """Whether a message to store is a recurring schedule (a delayed one is ``@at``, kept apart)."""
    pattern = headers.get(SCHEDULE_HEADER)
    return pattern is not None and not pattern.startswith("@at ")


def wall_now(server: MemoryServer) -> _dt.datetime:
    """The wall-clock time on the server's clock: a clock's own ``wall()`` (ManualClock has one), else now."""
    wall = getattr(server.clock, "wall", None)
    return wall() if callable(wall) else _dt.datetime.now(_dt.UTC)


def hold(server: MemoryServer, stream: MemoryStream, message: Outgoing) -> StoredMessage:
    """Store the schedule ``message`` in ``stream`` in place of the one its subject held, and arm its first
    tick; what the server refuses (flag, pattern, zone, target) raises as the server answers it."""
    headers = message.headers
    if not stream.allow_msg_schedules:
        raise StreamFlagError(message.subject, stream.name, "message schedules", "allow_msg_schedules", 400)
    target = headers.get(TARGET_HEADER, "")
    if not target or target == message.subject or not any(subject_matches(p, target) for p in stream.subjects):
        raise PublishError(message.subject, "message schedules target is invalid", 400)
    ttl = headers.get(TTL_HEADER)
    if ttl is not None and not stream.allow_msg_ttl:
        raise StreamFlagError(message.subject, stream.name, "per-message TTLs", "allow_msg_ttl", 400)
    first = _next_tick(headers, wall_now(server), message.subject)
    for old in stream.messages:  # the rollup: one schedule per subject
        if old.subject == message.subject:
            stream.deleted.add(old.seq)
            stream.schedules.discard(old.seq)
    held = server.append(stream, message.subject, message.body, headers, deliver=False)
    stream.schedules.add(held.seq)
    _arm(server, stream, held, first)
    return held


def _arm(server: MemoryServer, stream: MemoryStream, held: StoredMessage, when: _dt.datetime) -> None:
    delay = max(0.0, (when - wall_now(server)).total_seconds())

    def tick() -> None:
        if held.seq in stream.deleted:  # replaced, removed or purged meanwhile: the schedule is gone
            return
        following = _next_tick(held.headers, when, held.subject)
        headers = {
            key: value
            for key, value in held.headers.items()
            if not key.startswith("Nats-Schedule") and not key.startswith("Nats-Expected-") and key != MSG_ID_HEADER
        }
        headers["Nats-Scheduler"] = held.subject
        headers["Nats-Schedule-Next"] = following.strftime("%Y-%m-%dT%H:%M:%SZ")
        ttl = held.headers.get(TTL_HEADER)
        if ttl is not None:
            headers["Nats-TTL"] = ttl
        stored = server.append(stream, held.headers[TARGET_HEADER], held.body, headers)
        seconds = go_duration_seconds(ttl) if ttl is not None else None
        if seconds is not None:
            expire_later(server, stream, stored, seconds)
        _arm(server, stream, held, following)

    server.clock.call_later(delay, tick)


def _next_tick(headers: dict[str, str], after: _dt.datetime, subject: str) -> _dt.datetime:
    pattern = headers[SCHEDULE_HEADER]
    zone = headers.get(TIME_ZONE_HEADER)
    if pattern.startswith("@every "):
        seconds = go_duration_seconds(pattern[len("@every ") :])
        if zone is None and seconds is not None and seconds >= 1:
            return after + _dt.timedelta(seconds=seconds)
    elif pattern in PREDEFINED or len(pattern.split()) == 6:  # the server reads six fields, seconds first
        try:
            return next_cron(pattern, zone, after)
        except InvalidArgumentError:
            pass
    raise PublishError(subject, "message schedules pattern is invalid", 400)
