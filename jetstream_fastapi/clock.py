"""Clocks for the in-memory broker: the real monotonic one, and :class:`ManualClock` that a test advances.

Every timer of :class:`~jetstream_fastapi.InMemoryBroker` goes through its clock: nak delays and backoff,
ack-wait expiry and the in-progress refresh of long handlers, the duplicate window, and the publish
deadline while the connection is down. With a :class:`ManualClock`, time moves only when the test says so::

    clock = ManualClock()
    broker = InMemoryBroker(clock=clock, ack_wait=30)
    ...
    await clock.advance(30)  # fires every timer due within 30 s, in order, without sleeping

Bounds on waiting stay in real time, so that a test cannot hang on them: the ``timeout`` of
``wait_until_idle`` and the ``shutdown_timeout`` of ``unsubscribe``/``disconnect``.

Imports nothing from ``nats``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol

from .errors import InvalidArgumentError

# Event-loop passes without clock activity after which the tasks a timer woke are taken as settled
# (waiting on something outside the clock, or done). Each pass is one `asyncio.sleep(0)`: cheap.
_QUIET_PASSES = 10
_MAX_PASSES = 100_000  # a task re-arming a zero-delay timer forever must not hang advance()


class Timer(Protocol):
    """A scheduled callback; ``cancel()`` stops it if it has not fired (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the in-memory broker needs of time: the current reading and one-shot timers."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once, ``delay`` seconds from now."""
        ...


class MonotonicClock:
    """Real time: ``time.monotonic()`` and the running event loop's timers. The broker's default."""

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """``loop.call_later`` on the running loop."""
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)

    def wall(self) -> _dt.datetime:
        """The wall-clock time now, in UTC (what cron schedules follow)."""
        return _dt.datetime.now(_dt.UTC)

    def __repr__(self) -> str:
        return "MonotonicClock()"


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "clock", "when")

    def __init__(self, clock: ManualClock, when: float, callback: Callable[[], None]) -> None:
        self.clock = clock
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.clock._activity += 1


class ManualClock:
    """A clock that stands still until :meth:`advance`: timers fire deterministically, nothing sleeps.

    ``start`` is the first reading. Timers due at the same instant fire in the order they were set.
    ``wall`` (an aware ``datetime``; default: the real time when the clock is made) is the wall-clock time
    at ``start``, moved by ``advance`` too: what the memory broker's cron schedules follow.
    """

    def __init__(self, start: float = 0.0, *, wall: _dt.datetime | None = None) -> None:
        if wall is not None and (not isinstance(wall, _dt.datetime) or wall.utcoffset() is None):
            raise InvalidArgumentError(f"wall must be a timezone-aware datetime, got {wall!r}")
        self._start = float(start)
        self._wall = (wall or _dt.datetime.now(_dt.UTC)).astimezone(_dt.UTC)
        self._now = float(start)
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()
        self._activity = 0  # bumped by every set, cancelled and fired timer: how settle() sees progress

    def now(self) -> float:
        """The current reading: ``start`` plus everything advanced so far."""
        return self._now

    def wall(self) -> _dt.datetime:
        """The wall-clock time now, in UTC: ``wall`` plus everything advanced so far."""
        return self._wall + _dt.timedelta(seconds=self._now - self._start)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` when the clock has been advanced ``delay`` seconds past now."""
        timer = _ManualTimer(self, self._now + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        self._activity += 1
        return timer

    @property
    def pending(self) -> int:
        """Timers set and not yet fired nor cancelled."""
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    def next_due(self) -> float | None:
        """Seconds until the earliest pending timer (0 if one is due now), or ``None`` when there is none."""
        for when, _, timer in sorted(self._timers):
            if not timer.cancelled:
                return max(0.0, when - self._now)
        return None

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer due on the way at its own instant.

        Before the first timer and after each one, the event loop runs until the tasks it woke have
        settled: a redelivered message's handler has started (and finished, unless it waits on something
        outside the broker), so a test can assert right after ``await clock.advance(...)``.
        ``advance(0)`` fires what is due now and lets the loop settle.
        """
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            raise InvalidArgumentError(f"seconds must be a number >= 0, got {seconds!r}")
        target = self._now + seconds
        await self.settle()
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.cancelled = True  # fired: a late cancel() is a no-op
            self._activity += 1
            timer.callback()
            await self.settle()
        self._now = max(self._now, target)

    async def settle(self) -> None:
        """Let the event loop run until no timer has been set, cancelled or fired for a few passes."""
        quiet = passes = 0
        while quiet < _QUIET_PASSES and passes < _MAX_PASSES:
            seen = self._activity
            await asyncio.sleep(0)
            passes += 1
            quiet = quiet + 1 if self._activity == seen else 0

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now:g}, pending={self.pending})"
