"""Lanes: at most ``limit`` long-lived tasks that run a handler on each message pushed to them.

A task per message costs its creation and a first step per message; a lane takes the next waiting message
as soon as it is done with one, and parks on a future when none is left. A push wakes one parked lane
(or starts one, up to the limit), and each woken lane wakes two more while messages outnumber the lanes
on their way: a burst for slow handlers fans out to every lane in a few event-loop turns, while with
fast handlers (which finish without suspending) the first lane runs the whole burst and the two it woke
find nothing (three wake-ups per burst instead of one per message).

Pure asyncio, no ``nats`` import.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Lanes(Generic[T]):
    """Runs ``handle(item)`` for every pushed item on at most ``limit`` tasks, until :meth:`close`."""

    def __init__(self, limit: int, handle: Callable[[T], Awaitable[None]], name: str) -> None:
        self._limit = limit
        self._handle = handle
        self._name = name
        self.ready: deque[T] = deque()
        """Pushed, not taken by a lane yet."""
        self.tasks: set[asyncio.Task[None]] = set()
        self._parked: deque[asyncio.Future[None]] = deque()
        self._waking = 0  # lanes woken (or started) that have not taken an item yet
        self._open = True

    def push(self, item: T) -> None:
        """Queue ``item`` for the next free lane."""
        self.ready.append(item)
        if self._waking == 0:  # otherwise a lane is about to run, and it wakes more if needed
            self._wake()

    def close(self) -> list[T]:
        """Stop taking items: parked lanes end, running ones end after their item; returns the items
        that were never taken (for the caller to give back)."""
        self._open = False
        left = list(self.ready)
        self.ready.clear()
        while self._parked:
            parked = self._parked.popleft()
            if not parked.done():
                parked.set_result(None)
        return left

    def _wake(self) -> bool:
        while self._parked:
            parked = self._parked.popleft()
            if not parked.done():
                parked.set_result(None)
                self._waking += 1
                return True
        if len(self.tasks) < self._limit:
            task = asyncio.create_task(self._lane(), name=self._name)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            self._waking += 1
            return True
        return False

    async def _lane(self) -> None:
        loop = asyncio.get_running_loop()
        ready = self.ready
        self._waking -= 1
        woken = True
        while self._open:
            if ready:
                item = ready.popleft()
                if woken:
                    woken = False
                    if len(ready) > self._waking and self._wake() and len(ready) > self._waking:
                        self._wake()
                await self._handle(item)
            else:
                parked: asyncio.Future[None] = loop.create_future()
                self._parked.append(parked)
                await parked
                self._waking -= 1
                woken = True
