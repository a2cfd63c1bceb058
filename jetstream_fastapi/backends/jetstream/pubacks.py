"""The PubAck inbox: one wildcard inbox per connection receives every PubAck (request/reply for publishing).

``nc.request()`` creates an inbox subscription per request (or, with its "new style", a future wrapped
in ``asyncio.wait_for``, which costs a task per request). Here one subscription receives every reply,
the callback hands each to its waiting future. A request with a timeout of at least
:data:`SHARED_TIMERS_FROM` shares its timer with the others due in the same :data:`TIMER_SLOT`: on asyncio's
loop a timer of its own (``call_later``, then ``cancel``) costs about 5 µs, over 1% of a whole HTTP request
that publishes (issue #11); such a request times out at most one slot (10 ms) after its deadline.
"""

from __future__ import annotations

import asyncio
import math

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


def is_no_responders(reply: Msg) -> bool:
    """Whether ``reply`` is the server's "no responders" status (nothing listens on the subject)."""
    return not reply.data and reply.headers is not None and reply.headers.get("Status") == "503"


SHARED_TIMERS_FROM = 0.2
"""Timeouts from this many seconds share a timer per :data:`TIMER_SLOT` (a shorter one gets its own)."""
TIMER_SLOT = 0.01
"""The width in seconds of a shared timer's slot: how late at most a request with a long timeout times out."""


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class PubAckInbox:
    """Sends requests with a reply subject under one inbox, and hands each answer to its waiting caller."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._publish = nc.publish  # (subject, payload, reply, headers)
        self._prefix = nc.new_inbox() + "."
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._next = 0
        # Slot number (deadline / TIMER_SLOT, rounded up) -> the tokens whose deadline falls in it. A token
        # stays until its slot's timer fires, answered or not: removing it on the answer would cost more.
        self._slots: dict[int, list[str]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Subscribe the inbox (once)."""
        if self._sub is not None:
            return
        subject = self._prefix + "*"
        self._sub = await self._nc.subscribe(subject, cb=self._on_reply)

    def _deliver(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def _on_reply(self, msg: Msg) -> None:
        self._deliver(msg)

    async def request(self, subject: str, body: bytes, headers: dict[str, str] | None, timeout: float) -> Msg:
        """Publish ``body`` to ``subject`` and return the reply; ``TimeoutError`` after ``timeout`` seconds.

        A "no responders" answer is returned like any other reply (empty, with a ``503`` status header).
        """
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = future
        if timeout >= SHARED_TIMERS_FROM:
            timer = None
            self._expire_in_slot(loop, loop.time() + timeout, token)
        else:
            timer = loop.call_later(timeout, _expire, future)
        try:
            await self._publish(subject, body, self._prefix + token, headers)
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            self._waiting.pop(token, None)

    def _expire_in_slot(self, loop: asyncio.AbstractEventLoop, deadline: float, token: str) -> None:
        slot = math.ceil(deadline / TIMER_SLOT)
        tokens = self._slots.get(slot)
        if tokens is None:
            tokens = self._slots[slot] = []
            loop.call_at(slot * TIMER_SLOT, self._expire_slot, slot)
        tokens.append(token)

    def _expire_slot(self, slot: int) -> None:
        """A shared timer fired: every request of ``slot`` still waiting times out."""
        waiting = self._waiting
        for token in self._slots.pop(slot, ()):
            future = waiting.get(token)
            if future is not None and not future.done():
                future.set_exception(TimeoutError())
