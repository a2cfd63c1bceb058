"""The broker's recurring schedules: :class:`Scheduling`, a base of
:class:`~jetstream_fastapi.core.broker.BaseBroker` (see :mod:`~jetstream_fastapi.core.recurring` for what a
schedule is, :mod:`~jetstream_fastapi.core.declaring` for how it is declared once across instances)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError
from .declaring import declare, declare_all, listing, recurring_schedule, remove
from .front import Front
from .publish_options import check_stream_name
from .recurring import RecurringSchedule, ScheduleDeclared, ScheduleInfo, ScheduleReport, check_name
from .subjects import check_subject

if TYPE_CHECKING:
    from ..driver import Payload


class Scheduling(Front):
    """Declare, list and remove recurring schedules."""

    async def declare_schedule(
        self,
        subject: str,
        *,
        cron: str | None = None,
        every: float | _dt.timedelta | None = None,
        timezone: str | None = None,
        message: Payload = b"",
        headers: dict[str, str] | None = None,
        name: str | None = None,
        ttl: float | _dt.timedelta | None = None,
        timeout: float | None = None,
    ) -> ScheduleDeclared:
        """Have the server publish ``message`` to ``subject`` at every tick of ``cron`` (in ``timezone``)
        or ``every`` interval, once per tick however many instances declare it: written only if the
        server holds no such schedule yet or a different one (then updated, and logged). With ``ttl``
        each tick leaves the stream after that many seconds."""
        schedule = recurring_schedule(
            subject, cron=cron, every=every, timezone=timezone, message=message, headers=headers, name=name, ttl=ttl
        )
        total = self._deadline(timeout)
        self._require()
        return await self._below(declare(self, schedule, total))

    async def declare_schedules(
        self, schedules: Iterable[RecurringSchedule], *, subjects: Iterable[str] = (), timeout: float | None = None
    ) -> ScheduleReport:
        """Declare ``schedules`` (as :meth:`declare_schedule`), and report the recurring schedules kept in
        their streams, and in the streams of ``subjects``, that are not among them (what an app's startup
        does: ``ConsumerRouter.start`` and ``jetstream_lifespan`` pass the handlers' subjects)."""
        wanted = list(schedules)
        names = [schedule.name for schedule in wanted]
        if len(set(names)) != len(names):  # two schedules would take turns replacing each other
            twice = sorted({name for name in names if names.count(name) > 1})
            raise InvalidArgumentError(f"schedule names declared twice: {twice} (give each a name=...)")
        total = self._deadline(timeout)
        self._require()
        return await self._below(declare_all(self, wanted, list(subjects), total))

    async def schedules(self, stream: str) -> list[ScheduleInfo]:
        """The recurring schedules kept in ``stream`` (declared by any app), by name."""
        check_stream_name(stream, "stream")
        self._require()
        return await self._below(listing(self, stream))

    async def remove_schedule(self, subject: str, *, name: str | None = None) -> bool:
        """Delete the recurring schedule ``name`` (default: ``subject``) of target ``subject``: it fires no
        more. False if there was none. An app that still declares it writes it again at its next start."""
        check_subject(subject, wildcards=False)
        schedule_name = check_name(subject if name is None else name)
        self._require()
        return await self._below(remove(self, subject, schedule_name))
