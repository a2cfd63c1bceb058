"""Lanes: at most ``limit`` long-lived tasks that run a handler on each message pushed to them.

A task per message costs its creation and a first step per message; a lane takes the next waiting message
as soon as it is done with one, and parks on a future when none is left. A push wakes one parked lane
(or starts one, up to the limit), and each woken lane wakes two more while messages outnumber the lanes
on their way: a burst for slow handlers fans out to every lane in a few event-loop turns, while with
fast handlers (which finish without suspending) the first lane runs the whole burst and the two it woke
find nothing (three wake-ups per burst instead of one per message).

:meth:`Lanes.offer` (or its parts, :meth:`Lanes.takes_inline`, :meth:`Lanes.watch_turns` and :meth:`Lanes.returned`)
saves the hop to a lane for a caller that is itself a task handing over items one by
one (nats-py's subscription task, on its public API). A parked lane runs only on the next event-loop
turn, and with fast handlers a consumer's pull cycle is a few turns long (server → reader → subscription
task → lane → flusher → server): one turn fewer gave ~20% more messages per second at the same CPU
(bench/, uvloop, no-op handler: ~0.75 → ~0.95 of a nats.go-style loop with the handler inline). So once
:data:`INLINE_AFTER` handlers in a row have returned without suspending, ``offer`` runs the item right
there on the caller's task. The first handler that suspends there (it awaited something not ready) ends
that for good, and every item goes to a lane again, so handlers that wait for I/O run side by side; the
caller's later items waited for that one handler, once.

Pure asyncio, no ``nats`` import.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

INLINE_AFTER = 256
"""Handlers in a row that returned without suspending before :meth:`Lanes.offer` runs items inline."""


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
        self._streak = 0  # handlers in a row that returned without suspending
        self._may_inline = True  # False once a handler run by offer() suspended
        self._turns = 0  # event-loop turns counted by _count_turn
        self._counting = False  # a _count_turn callback is scheduled

    def push(self, item: T) -> None:
        """Queue ``item`` for the next free lane."""
        self.ready.append(item)
        if self._waking == 0:  # otherwise a lane is about to run, and it wakes more if needed
            self._wake()

    @property
    def inline(self) -> bool:
        """Whether :meth:`offer` runs items on the caller's task now."""
        return self._may_inline and self._streak >= INLINE_AFTER

    async def offer(self, item: T) -> None:
        """Run ``item`` on the caller's task when handlers have not been suspending (see the module
        docstring) and no item is waiting; otherwise :meth:`push` it."""
        if not self.takes_inline():
            self.push(item)
            return
        turns = self.watch_turns()
        await self._handle(item)
        self.returned(turns)

    def takes_inline(self) -> bool:
        """Whether the next item may run on the caller's task (as :meth:`offer` runs it): handlers have not
        been suspending, and no item is waiting (an inline one would jump the queue).

        :meth:`offer` in parts, for a caller on the hot path that awaits its own handler instead of a
        coroutine around it: ``takes_inline()``, then ``turns = watch_turns()``, the handler, and
        ``returned(turns)``."""
        return self._streak >= INLINE_AFTER and self._may_inline and not self.ready and self._open

    def watch_turns(self) -> int:
        """The event-loop turns counted so far, for :meth:`returned` after a handler."""
        # _count_turn runs on the loop's next turn; a handler that suspends resumes on that turn at the
        # earliest, and after it (callbacks run in order): the count moves only if the handler suspended.
        if not self._counting:
            self._counting = True
            asyncio.get_running_loop().call_soon(self._count_turn)
        return self._turns

    def returned(self, turns: int) -> None:
        """An inline handler returned: if it suspended (the turns moved), items go to lanes from now on."""
        if self._turns != turns:
            self._may_inline = False
            self._streak = 0

    def _count_turn(self) -> None:
        self._counting = False
        self._turns += 1

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
                turns = self.watch_turns()
                await self._handle(item)
                self._streak = self._streak + 1 if self._turns == turns else 0
            else:
                parked: asyncio.Future[None] = loop.create_future()
                self._parked.append(parked)
                await parked
                self._waking -= 1
                woken = True
