"""``ConsumerRouter``: declare consumer handlers with a decorator, compose routers across modules.

Registration mistakes raise at import time, not at startup: a handler that is not ``async``, an invalid
subject or queue name, an unknown consumer option, the same subject and queue registered twice, a bad
cron expression or time zone::

    consumer_router = ConsumerRouter()

    @consumer_router.handle("orders.created", queue="order-processor")
    async def process(msg: Message) -> None: ...

    @consumer_router.schedule("reports.daily", cron="0 6 * * *", timezone="Europe/Berlin")
    @consumer_router.handle("reports.daily", queue="report-builder")
    async def build(msg: Message) -> None: ...
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, Unpack

from ..core.declaring import recurring_schedule
from ..core.exclusive import check_exclusive
from ..core.handling import ConsumerSettings, check_handler
from ..core.keyorder import check_key_order
from ..core.recurring import RecurringSchedule, ScheduleReport
from ..core.subjects import check_queue, check_subject
from ..driver import Broker, ConsumerOptions, Payload, Subscriber
from ..errors import InvalidArgumentError
from .injection import HandlerPlan
from .publishing import P, Publication

HandlerT = TypeVar("HandlerT", bound=Callable[..., Awaitable[object]])
F = TypeVar("F")


async def declare_schedules(broker: Broker, routers: Iterable[ConsumerRouter]) -> ScheduleReport | None:
    """Declare the recurring schedules of ``routers`` on ``broker`` at once, reporting those kept in the
    streams of their schedules and handlers that none declares: also when the routers declare none any
    more (an app that dropped its last schedule hears of it). ``None``: nothing to declare or look at."""
    routers = list(routers)
    schedules = [schedule for router in routers for schedule in router.schedules]
    subjects = [spec.subject for router in routers for spec in router]
    if not schedules and not subjects:
        return None
    return await broker.declare_schedules(schedules, subjects=subjects)


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """One registered handler: what ``jetstream_lifespan`` passes to ``broker.subscribe``."""

    subject: str
    queue: str | None
    plan: HandlerPlan
    options: ConsumerOptions = field(default_factory=lambda: ConsumerOptions())
    exclusive: bool = False
    """One instance of the queue handles messages at a time (see :mod:`~jetstream_fastapi.core.exclusive`)."""
    key_order: bool = False
    """One message per key at a time, in stream order (see :mod:`~jetstream_fastapi.core.keyorder`)."""
    partitions: int | None = None

    @property
    def handler(self) -> Callable[..., Awaitable[object]]:
        """The function as it was registered."""
        return self.plan.handler

    @property
    def key(self) -> tuple[str, str | None]:
        """Subject and queue: registering the same pair twice is a mistake."""
        return self.subject, self.queue


class ConsumerRouter:
    """A group of consumer handlers; ``options`` are defaults for every handler registered on it."""

    def __init__(self, **options: Unpack[ConsumerOptions]) -> None:
        ConsumerSettings().merged(options, "ConsumerRouter()")  # unknown names and bad values raise here
        self.options = options
        self._specs: dict[tuple[str, str | None], HandlerSpec] = {}
        self._publications: dict[str, Publication[Any]] = {}
        self._schedules: dict[str, RecurringSchedule] = {}

    def publisher(self, subject: str, payload: type[P], *, description: str | None = None) -> Publication[P]:
        """Declare that this router's code publishes ``payload`` on ``subject``: the returned
        :class:`~jetstream_fastapi.Publication` publishes it, and the AsyncAPI document lists it."""
        publication = Publication(subject, payload, description=description)
        self.add_publication(publication)
        return publication

    def add_publication(self, publication: Publication[Any]) -> None:
        """Declare an existing :class:`~jetstream_fastapi.Publication` on this router."""
        existing = self._publications.get(publication.subject)
        if existing is not None and existing.payload is not publication.payload:
            raise InvalidArgumentError(
                f"subject {publication.subject!r} is already declared with payload {existing.payload!r}"
            )
        self._publications[publication.subject] = publication

    @property
    def publications(self) -> list[Publication[Any]]:
        """The subjects declared as published (see :meth:`publisher`)."""
        return list(self._publications.values())

    def handle(
        self,
        subject: str,
        *,
        queue: str | None = None,
        exclusive: bool = False,
        key_order: bool = False,
        partitions: int | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> Callable[[HandlerT], HandlerT]:
        """Register the decorated ``async`` function for ``subject``; returns it unchanged.

        ``queue`` names a durable consumer shared by every instance (load balancing); without it each
        instance gets every message. ``exclusive=True`` (with a queue): one instance at a time handles
        them, the others stand by. ``key_order=True`` (with a queue): the messages of one key (the
        subject's ``*`` tokens) one at a time in stream order, over ``partitions`` partitions. ``options``
        override the router's and the broker's defaults.
        """
        check_subject(subject, wildcards=True)
        if queue is not None:
            check_queue(queue)
        check_exclusive(exclusive, queue)
        merged: ConsumerOptions = {**self.options, **options}
        if check_key_order(key_order, partitions, queue, subject, merged) and exclusive:
            raise InvalidArgumentError("key_order=True and exclusive=True do not go together")
        ConsumerSettings().merged(merged, "ConsumerRouter.handle()")

        def decorator(handler: HandlerT) -> HandlerT:
            check_handler(handler)
            self._add(HandlerSpec(subject, queue, HandlerPlan(handler), merged, exclusive, key_order, partitions))
            return handler

        return decorator

    def schedule(
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
    ) -> Callable[[F], F]:
        """Declare a recurring schedule: the server publishes ``message`` to ``subject`` at every tick of
        ``cron`` (5 fields, or 6 with seconds first; in ``timezone``, default UTC) or of the ``every``
        interval (seconds or a ``timedelta``, at least 1 s), once per tick however many instances run.
        Registered when called; as a decorator it returns the function unchanged. ``name`` (default:
        ``subject``) tells apart several schedules of one subject; ``ttl`` (seconds, at least 1) has each
        tick leave the stream after that time. Declared at startup (see :mod:`~jetstream_fastapi.core.declaring`)."""
        schedule = recurring_schedule(
            subject, cron=cron, every=every, timezone=timezone, message=message, headers=headers, name=name, ttl=ttl
        )
        self.add_schedule(schedule)

        def decorator(function: F) -> F:
            return function

        return decorator

    def add_schedule(self, schedule: RecurringSchedule) -> None:
        """Add a checked :class:`~jetstream_fastapi.core.recurring.RecurringSchedule`; one per name."""
        existing = self._schedules.get(schedule.name)
        if existing is not None and existing != schedule:
            raise InvalidArgumentError(
                f"a schedule named {schedule.name!r} is already declared ({existing.describe()}); "
                "give the other one a name=..."
            )
        self._schedules[schedule.name] = schedule

    @property
    def schedules(self) -> list[RecurringSchedule]:
        """The recurring schedules declared on this router (see :meth:`schedule`)."""
        return list(self._schedules.values())

    def include_router(self, router: ConsumerRouter) -> None:
        """Add every handler of ``router`` (with its own options) to this one."""
        for spec in router:
            options: ConsumerOptions = {**self.options, **spec.options}
            self._add(
                HandlerSpec(
                    spec.subject, spec.queue, spec.plan, options, spec.exclusive, spec.key_order, spec.partitions
                )
            )
        for publication in router.publications:
            self.add_publication(publication)
        for schedule in router.schedules:
            self.add_schedule(schedule)

    def _add(self, spec: HandlerSpec) -> None:
        existing = self._specs.get(spec.key)
        if existing is not None:
            where = f"queue {spec.queue!r}" if spec.queue else "no queue"
            raise InvalidArgumentError(
                f"subject {spec.subject!r} with {where} is already handled by {existing.plan.name}; "
                f"cannot also register {spec.plan.name}"
            )
        self._specs[spec.key] = spec

    async def start(
        self, broker: Broker, state: Mapping[str, Any] | None = None, *, schedules: bool = True
    ) -> list[Subscriber]:
        """Declare this router's schedules (unless ``schedules=False``), then subscribe every handler on
        ``broker`` (what ``jetstream_lifespan`` does at startup); ``state`` is what handlers asking for
        ``State`` receive. On a failure, those already started are stopped."""
        if schedules:
            await declare_schedules(broker, [self])
        subscribers: list[Subscriber] = []
        try:
            for spec in self:
                handler = spec.plan.bind(broker, state)
                subscribers.append(
                    await broker.subscribe(
                        spec.subject,
                        handler,
                        queue=spec.queue,
                        exclusive=spec.exclusive,
                        key_order=spec.key_order,
                        partitions=spec.partitions,
                        **spec.options,
                    )
                )
        except BaseException:
            await asyncio.gather(*(sub.unsubscribe() for sub in subscribers))
            raise
        return subscribers

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(list(self._specs.values()))

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"ConsumerRouter(handlers={[f'{s.subject}@{s.queue}' for s in self._specs.values()]})"


def _name(handler: Callable[..., Any]) -> str:
    return getattr(handler, "__qualname__", repr(handler))
