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

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..errors import NoStreamError, PublishConflictError, StreamFlagError
from .publish_options import PublishConditions, check_server_version
from .recurring import (
    SCHEDULE_HEADER,
    TARGET_HEADER,
    TIME_ZONE_HEADER,
    TTL_HEADER,
    RecurringSchedule,
    go_duration_seconds,
    name_of,
    recurring_filter,
    recurring_subject,
)
from .schedules import SCHEDULE_TOKEN

if TYPE_CHECKING:
    from ..backends.base import Stored
    from .front import Front

logger = logging.getLogger("jetstream_fastapi")

FEATURE = "recurring message schedules"
"""The :data:`~jetstream_fastapi.core.publish_options.MIN_SERVER_VERSION` entry of cron and ``@every``."""
_ATTEMPTS = 5  # reads and conditional writes before a declaration gives up to a writer that keeps winning


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A recurring schedule as the server keeps it."""

    name: str
    subject: str
    """The target subject."""
    pattern: str
    """The ``Nats-Schedule`` value (six cron fields, ``@daily``..., ``@every 1m``)."""
    timezone: str | None
    stream: str
    schedule_subject: str
    """The subject the schedule message is kept on."""
    seq: int
    """The schedule message's stream sequence."""
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    """The headers each tick carries (without the server's ``Nats-*`` ones)."""
    ttl: float | None = None
    """Seconds each tick stays in the stream (``None``: no TTL)."""

    def describe(self) -> str:
        """One line for logs, as :meth:`RecurringSchedule.describe`."""
        return self.as_schedule().describe()

    def as_schedule(self) -> RecurringSchedule:
        """What a declaration of this schedule says."""
        return RecurringSchedule(
            self.name, self.subject, self.pattern, self.timezone, self.body, self.headers, self.ttl
        )

    def same_as(self, schedule: RecurringSchedule) -> bool:
        """Whether this is what ``schedule`` asks for (pattern, zone, target, body, headers and TTL)."""
        mine = (self.pattern, self.timezone, self.subject, self.body, self.headers, self.ttl)
        return mine == (
            schedule.pattern,
            schedule.timezone,
            schedule.subject,
            schedule.body,
            dict(schedule.headers),
            schedule.ttl,
        )


@dataclass(frozen=True, slots=True)
class ScheduleDeclared:
    """What declaring one schedule did: ``"created"``, ``"updated"`` (``previous`` was there) or ``"unchanged"``."""

    schedule: ScheduleInfo
    outcome: Literal["created", "updated", "unchanged"]
    previous: ScheduleInfo | None = None


@dataclass(frozen=True, slots=True)
class ScheduleReport:
    """What declaring an app's schedules found: each declaration, and the schedules in its streams that
    it no longer declares (still firing: remove them with ``broker.remove_schedule``)."""

    declared: list[ScheduleDeclared]
    undeclared: list[ScheduleInfo]


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
