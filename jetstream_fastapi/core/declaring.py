"""Declaring recurring schedules idempotently, listing them, removing them: the front's side, for both backends.

Every app instance declares the same schedules at startup; the server must end up with one schedule per
name, and no instance may write over another's write with the same content (an ``@every`` schedule counts
its interval from its latest write). So an instance reads the schedule subject's current message first:
the same schedule -> nothing is written; none or a different one -> it is written with
``expected_last_subject_sequence`` set to what was read, so that of two instances starting at once one
writes and the other is refused, reads again and finds the winner's. A changed schedule is logged (WARNING,
old and new); a schedule kept in the app's streams that the app no longer declares is reported (WARNING,
and in :attr:`ScheduleReport.undeclared`) and left to fire: removing it is an explicit
``broker.remove_schedule(...)``.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..driver import Payload
from ..errors import InvalidArgumentError, NoStreamError, PublishConflictError, StreamFlagError
from .payloads import coerce_message
from .publish_options import PublishConditions, check_server_version
from .recurring import (
    SCHEDULE_HEADER,
    TARGET_HEADER,
    TIME_ZONE_HEADER,
    TTL_HEADER,
    RecurringSchedule,
    ScheduleDeclared,
    ScheduleInfo,
    ScheduleReport,
    check_name,
    check_timezone,
    go_duration,
    go_duration_seconds,
    name_of,
    next_cron,
    recurring_filter,
    recurring_subject,
    server_cron,
)
from .schedules import SCHEDULE_TOKEN
from .subjects import check_subject

__all__ = [
    "ScheduleDeclared",
    "ScheduleInfo",
    "ScheduleReport",
    "declare",
    "declare_all",
    "listing",
    "recurring_schedule",
    "remove",
]

if TYPE_CHECKING:
    from ..backends.base import Stored
    from .front import Front

logger = logging.getLogger("jetstream_fastapi")

FEATURE = "recurring message schedules"
"""The :data:`~jetstream_fastapi.core.publish_options.MIN_SERVER_VERSION` entry of cron and ``@every``."""
_ATTEMPTS = 5  # reads and conditional writes before a declaration gives up to a writer that keeps winning


def recurring_schedule(
    subject: str,
    *,
    cron: str | None = None,
    every: float | _dt.timedelta | None = None,
    timezone: str | None = None,
    message: Payload = b"",
    headers: dict[str, str] | None = None,
    name: str | None = None,
    ttl: float | _dt.timedelta | None = None,
) -> RecurringSchedule:
    """Check a schedule as a caller gives it; :class:`InvalidArgumentError` saying what is wrong."""
    check_subject(subject, wildcards=False)
    if (cron is None) == (every is None):
        raise InvalidArgumentError("give a schedule either cron=... or every=..., exactly one of them")
    if cron is not None:
        if timezone is not None:
            check_timezone(timezone)
        pattern = server_cron(cron)
        next_cron(pattern, timezone, _dt.datetime.now(_dt.UTC))  # one that never fires is refused too
    else:
        if timezone is not None:
            raise InvalidArgumentError("timezone goes with cron=...; an every=... interval has no time zone")
        pattern = f"@every {go_duration(every, 'every')}"
    body, merged = coerce_message(message, headers)
    for key in merged:
        if key.lower().startswith("nats-"):
            raise InvalidArgumentError(f"a schedule's header {key!r} is reserved: Nats-* headers are the server's")
    kept = None if ttl is None else go_duration_seconds(go_duration(ttl, "ttl"))
    schedule_name = check_name(subject if name is None else name)
    return RecurringSchedule(schedule_name, subject, pattern, timezone, body, merged, kept)


def info_of(stored: Stored) -> ScheduleInfo | None:
    """The schedule in a stored message (``None``: not a recurring schedule of this library)."""
    name = name_of(stored.subject)
    pattern = stored.headers.get(SCHEDULE_HEADER)
    if name is None or pattern is None or pattern.startswith("@at "):
        return None
    headers = {key: value for key, value in stored.headers.items() if not key.lower().startswith("nats-")}
    ttl = stored.headers.get(TTL_HEADER)
    return ScheduleInfo(
        name,
        stored.headers.get(TARGET_HEADER, ""),
        pattern,
        stored.headers.get(TIME_ZONE_HEADER),
        stored.stream,
        stored.subject,
        stored.seq,
        stored.body,
        headers,
        go_duration_seconds(ttl) if ttl is not None else None,
    )


async def home(broker: Front, subject: str, name: str, *, writing: bool, ttl: bool = False) -> tuple[str, str]:
    """The stream and schedule subject of schedule ``name`` for target ``subject``; with ``writing``, the
    stream must allow schedules (:class:`StreamFlagError` otherwise)."""
    backend = broker._backend
    stream = await backend.stream_for(subject)
    facts = await backend.stream_facts(stream)
    if writing and not facts.allow_msg_schedules:
        raise StreamFlagError(subject, stream, "message schedules", "allow_msg_schedules")
    if ttl and not facts.allow_msg_ttl:
        raise StreamFlagError(subject, stream, "per-message TTLs (the ticks' ttl)", "allow_msg_ttl")
    schedule_subject = recurring_subject(facts.subjects, name)
    if schedule_subject is None:
        raise NoStreamError(
            subject,
            f"stream {stream!r} has no '>' subject to keep recurring schedules on: add one such as "
            f"'{subject.split('.')[0]}.{SCHEDULE_TOKEN}.>'",
        )
    return stream, schedule_subject


async def declare(broker: Front, schedule: RecurringSchedule, timeout: float) -> ScheduleDeclared:
    """Make the server hold ``schedule``, writing only if it holds something else (see the module docstring)."""
    backend = broker._backend
    check_server_version([FEATURE], backend.server_version)
    stream, schedule_subject = await home(
        broker, schedule.subject, schedule.name, writing=True, ttl=schedule.ttl is not None
    )
    conflict: PublishConflictError | None = None
    for _ in range(_ATTEMPTS):
        current = await backend.read_last(stream, schedule_subject)
        previous = info_of(current) if current is not None else None
        if previous is not None and previous.same_as(schedule):
            logger.debug("schedule %s unchanged: %s", schedule.name, schedule.describe())
            return ScheduleDeclared(previous, "unchanged")
        outgoing = broker._prepare(schedule_subject, schedule.body, None, schedule.wire_headers())
        outgoing.conditions = PublishConditions(expected_last_subject_sequence=current.seq if current else 0)
        try:
            ack = await broker._store(outgoing, timeout)
        except PublishConflictError as error:  # another instance wrote first: read what it wrote
            conflict = error
            continue
        info = ScheduleInfo(
            schedule.name,
            schedule.subject,
            schedule.pattern,
            schedule.timezone,
            stream,
            schedule_subject,
            ack.seq,
            schedule.body,
            dict(schedule.headers),
            schedule.ttl,
        )
        if previous is None:
            logger.info("declared schedule %s: %s", schedule.name, schedule.describe())
            return ScheduleDeclared(info, "created")
        logger.warning("schedule %s changed: was %s, now %s", schedule.name, previous.describe(), schedule.describe())
        return ScheduleDeclared(info, "updated", previous)
    assert conflict is not None
    raise conflict


async def listing(broker: Front, stream: str) -> list[ScheduleInfo]:
    """Every recurring schedule kept in ``stream`` (one read per schedule), by name."""
    backend = broker._backend
    facts = await backend.stream_facts(stream)
    wanted = recurring_filter(facts.subjects)
    found: list[ScheduleInfo] = []
    seq = 1
    while wanted is not None:
        stored = await backend.read(stream, seq, subject=wanted, next=True)
        if stored is None:
            break
        info = info_of(stored)
        if info is not None:
            found.append(info)
        seq = stored.seq + 1
    return sorted(found, key=lambda info: info.name)


async def declare_all(
    broker: Front, schedules: Iterable[RecurringSchedule], subjects: Iterable[str], timeout: float
) -> ScheduleReport:
    """Declare ``schedules``, then report the recurring schedules kept in their streams and in those of
    ``subjects`` (the app's handlers) that are not among them."""
    declared = [await declare(broker, schedule, timeout) for schedule in schedules]
    streams = {item.schedule.stream for item in declared}
    for subject in subjects:
        try:
            streams.add(await broker._backend.stream_for(subject))
        except NoStreamError:
            continue  # subscribing it will say so
    names = {(item.schedule.stream, item.schedule.name) for item in declared}
    undeclared = []
    for stream in sorted(streams):
        for info in await listing(broker, stream):
            if (stream, info.name) not in names:
                undeclared.append(info)
                logger.warning(
                    "schedule %s (%s) is kept in stream %s but this app no longer declares it: it still fires; "
                    "remove it with `await broker.remove_schedule(%r, name=%r)` if it is not wanted",
                    info.name,
                    info.describe(),
                    stream,
                    info.subject,
                    info.name,
                )
    return ScheduleReport(declared, undeclared)


async def remove(broker: Front, subject: str, name: str) -> bool:
    """Delete schedule ``name`` of target ``subject`` (it fires no more); False if there was none."""
    backend = broker._backend
    stream, schedule_subject = await home(broker, subject, name, writing=False)
    current = await backend.read_last(stream, schedule_subject)
    if current is None or info_of(current) is None:
        return False
    removed = await backend.delete(stream, current.seq)
    if removed:
        logger.info("removed schedule %s from stream %s", name, stream)
    return removed
