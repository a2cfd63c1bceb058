"""Recurring schedules (``ConsumerRouter.schedule``): a cron expression in a time zone, or a fixed interval,
that the *server* turns into a message on the target subject at every tick (ADR-51 message schedules,
cron and ``@every`` since nats-server 2.14).

A schedule is one message on a schedule subject of the target's stream, with the ``Nats-Schedule``
(the pattern), ``Nats-Schedule-Target`` and ``Nats-Schedule-Time-Zone`` headers; the server keeps one
schedule per subject (a new one replaces it), so the subject is made from the schedule's name
(``reports._schedule.recurring.<name>``) and every app instance declaring it writes the same one. This
module holds the schedules' values (:class:`RecurringSchedule`, what the server keeps:
:class:`ScheduleInfo`, and what declaring did: :class:`ScheduleDeclared`, :class:`ScheduleReport`; part of the
contract, so imported from nothing above) and the server's forms; :mod:`~jetstream_fastapi.core.declaring`
checks what a caller asks for (at import time, in the decorator) and declares it.

The server's cron grammar (``server/cron.go``): six fields, seconds first; ``*``, ``?``, numbers, ranges,
steps and lists, month and weekday names of three letters, weekdays 0-6 (0: Sunday); ``@yearly``,
``@annually``, ``@monthly``, ``@weekly``, ``@daily``, ``@midnight``, ``@hourly``; a time zone only with a
cron pattern; ``@every <Go duration>`` of at least one second. Five-field cron is taken as ``0 <fields>``.
Fields are checked here for what the server accepts (no ``L``, ``W``, ``#``, no weekday 7); the values and
the firing times come from ``cronsim`` (the next firing for the memory backend and for ``next_after``).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from cronsim import CronSim, CronSimError

from ..errors import InvalidArgumentError
from .schedules import SCHEDULE_TOKEN

RECURRING_TOKEN = "recurring"
"""The token after ``_schedule`` that marks a recurring schedule's subject (delayed ones have an id there)."""
SCHEDULE_HEADER = "Nats-Schedule"
TARGET_HEADER = "Nats-Schedule-Target"
TIME_ZONE_HEADER = "Nats-Schedule-Time-Zone"
TTL_HEADER = "Nats-Schedule-TTL"
MIN_INTERVAL = 1.0
"""The shortest ``every`` the server accepts, in seconds."""

PREDEFINED = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
"""The server's predefined cron patterns, as six fields."""

_VALUE = r"(?:\d+|[A-Za-z]{3})"
_TERM = re.compile(rf"(?:\*|\?|{_VALUE}(?:-{_VALUE})?)(?:/\d+)?")
_NAME_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class RecurringSchedule:
    """One recurring schedule, checked: what the server is asked to publish, where and when."""

    name: str
    """Its stable name: the target subject unless given (``name=``); one schedule per name."""
    subject: str
    """The target subject the server publishes to at every tick."""
    pattern: str
    """The ``Nats-Schedule`` value: six cron fields, a predefined ``@daily``..., or ``@every <duration>``."""
    timezone: str | None
    """The IANA time zone of a cron pattern (``None``: UTC)."""
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Headers every tick carries (the message's own, then ``headers``)."""
    ttl: float | None = None
    """Seconds each tick stays in the stream (``Nats-Schedule-TTL``; ``None``: as long as the stream keeps it)."""

    @property
    def interval(self) -> float | None:
        """Seconds between ticks of an ``@every`` schedule; ``None`` for cron."""
        if not self.pattern.startswith("@every "):
            return None
        return go_duration_seconds(self.pattern[len("@every ") :])

    def wire_headers(self) -> dict[str, str]:
        """The schedule's headers as the server reads them (the user's, then the ``Nats-Schedule*`` ones)."""
        headers = {**self.headers, SCHEDULE_HEADER: self.pattern, TARGET_HEADER: self.subject}
        if self.timezone is not None:
            headers[TIME_ZONE_HEADER] = self.timezone
        if self.ttl is not None:
            headers[TTL_HEADER] = go_duration(self.ttl, "ttl")
        return headers

    def describe(self) -> str:
        """The schedule as one line for logs: ``cron '0 0 6 * * *' (Europe/Berlin) -> reports.daily``."""
        if self.interval is not None:
            when = f"every {self.pattern[len('@every ') :]}"
        else:
            when = f"cron {self.pattern!r} ({self.timezone or 'UTC'})"
        kept = f", ticks kept {go_duration(self.ttl, 'ttl')}" if self.ttl is not None else ""
        return f"{when} -> {self.subject}{kept}"

    def next_after(self, moment: _dt.datetime) -> _dt.datetime:
        """The first tick after ``moment`` (an aware datetime), in UTC. For ``@every`` the server counts from
        when the schedule was stored; this is ``moment`` plus the interval."""
        interval = self.interval
        if interval is not None:
            return (moment + _dt.timedelta(seconds=interval)).astimezone(_dt.UTC)
        return next_cron(self.pattern, self.timezone, moment)


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


def check_name(name: object) -> str:
    """A schedule name: tokens of letters, digits, ``_`` and ``-`` joined by ``.`` (a subject is one)."""
    if not isinstance(name, str) or not name or not all(_NAME_TOKEN.fullmatch(t) for t in name.split(".")):
        raise InvalidArgumentError(
            f"a schedule name is tokens of letters, digits, '_' and '-' joined by '.', got {name!r}"
        )
    return name


def check_timezone(timezone: object) -> zoneinfo.ZoneInfo:
    """The IANA time zone named ``timezone`` (``Europe/Berlin``); :class:`InvalidArgumentError` if unknown."""
    if not isinstance(timezone, str) or not timezone:
        raise InvalidArgumentError(f"timezone must be an IANA time zone name such as 'Europe/Berlin', got {timezone!r}")
    try:
        return zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidArgumentError(f"unknown time zone {timezone!r} (an IANA name such as 'Europe/Berlin')") from None


def server_cron(cron: object) -> str:
    """``cron`` in the server's form: five fields get seconds ``0`` in front, six stay (seconds first), a
    predefined ``@daily`` stays; anything the server would refuse raises :class:`InvalidArgumentError`."""
    if not isinstance(cron, str):
        raise InvalidArgumentError(f"cron must be a cron expression string, got {cron!r}")
    text = " ".join(cron.split())
    if text.lower() in PREDEFINED:
        return text.lower()
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise InvalidArgumentError(
            f"cron must have 5 fields (minute hour day month weekday) or 6 (seconds first), "
            f"or be one of {', '.join(PREDEFINED)}; got {cron!r}"
        )
    for index, value in enumerate(fields):
        if not all(_TERM.fullmatch(term) for term in value.split(",")):
            raise InvalidArgumentError(
                f"cron {cron!r}: field {value!r} is not numbers, names, '*', '?', ranges, steps or lists "
                "(the server knows no L, W or #)"
            )
        if index == 5 and any(int(n) > 6 for n in re.findall(r"(?<![/\d])\d+", value)):
            raise InvalidArgumentError(f"cron {cron!r}: weekdays are 0-6 (0 is Sunday) on the server, got {value!r}")
    pattern = " ".join(fields)
    try:
        CronSim(_cronsim_form(pattern), _dt.datetime(2000, 1, 1))
    except CronSimError as error:
        raise InvalidArgumentError(f"invalid cron expression {cron!r}: {error}") from None
    return pattern


def next_cron(pattern: str, timezone: str | None, moment: _dt.datetime) -> _dt.datetime:
    """The first firing of the server ``pattern`` (six fields or predefined) strictly after ``moment``, in
    ``timezone`` (``None``: UTC); returned in UTC."""
    zone = check_timezone(timezone) if timezone is not None else _dt.UTC
    local = moment.astimezone(zone).replace(microsecond=0)
    try:
        fire = next(CronSim(_cronsim_form(pattern), local))
    except CronSimError as error:
        raise InvalidArgumentError(f"invalid cron expression {pattern!r}: {error}") from None
    except StopIteration:
        raise InvalidArgumentError(f"cron {pattern!r} never fires (no matching date in 50 years)") from None
    return fire.astimezone(_dt.UTC)


def _cronsim_form(pattern: str) -> str:
    # cronsim reads six fields seconds first, as the server does; the server's '?' is '*'.
    return PREDEFINED.get(pattern, pattern).replace("?", "*")


def go_duration(value: object, what: str = "every") -> str:
    """``value`` (seconds or a ``timedelta``, at least 1 s) as a Go duration the server parses (``1h30m``)."""
    if isinstance(value, _dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        seconds = float(value)
    else:
        raise InvalidArgumentError(f"{what} must be a timedelta or a number of seconds, got {value!r}")
    if seconds < MIN_INTERVAL:
        raise InvalidArgumentError(
            f"{what} must be at least {MIN_INTERVAL:g} second (the server's minimum), got {value!r}"
        )
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if rest:
        parts.append(f"{rest // 1000}s" if rest % 1000 == 0 else f"{rest}ms")
    return "".join(parts)


_GO_UNIT = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_GO_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def go_duration_seconds(text: str) -> float | None:
    """Seconds in a Go duration of ``h``, ``m``, ``s``, ``ms`` parts; ``None`` if it is not one."""
    parts = _GO_UNIT.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _GO_SECONDS[unit] for number, unit in parts)


def recurring_subject(patterns: list[str] | tuple[str, ...], name: str) -> str | None:
    """The subject of schedule ``name`` in a stream with subjects ``patterns``: made from a ``>`` subject
    (``reports.>`` -> ``reports._schedule.recurring.<name>``); ``None`` if the stream has none."""
    for pattern in patterns:
        tokens = pattern.split(".")
        if tokens[-1] == ">":
            head = [SCHEDULE_TOKEN if token == "*" else token for token in tokens[:-1]]
            return ".".join([*head, SCHEDULE_TOKEN, RECURRING_TOKEN, name])
    return None


def recurring_filter(patterns: list[str] | tuple[str, ...]) -> str | None:
    """The filter capturing every recurring schedule kept in a stream with subjects ``patterns``."""
    return recurring_subject(patterns, ">")


def name_of(schedule_subject: str) -> str | None:
    """The schedule name in a recurring schedule's subject (``None``: not one)."""
    marker = f".{SCHEDULE_TOKEN}.{RECURRING_TOKEN}."
    _, found, name = schedule_subject.partition(marker)
    return name if found and name else None
