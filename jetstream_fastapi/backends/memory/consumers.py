"""The memory backend's consumers: what a JetStream consumer keeps on the server, and its members.

The model follows what nats-server 2.15 does, as measured by ``tests/test_contract_ack_wait.py``:

* a delivered message stays *pending* until it is acked or terminated: while its handler runs, while a
  nak delay runs, and after its ack wait expired. At most ``max_ack_pending`` messages are pending across
  all members; a new message waits for room, a redelivery does not;
* an ack wait that expires (no ack, nak, term or in-progress in time) redelivers the message with the
  next attempt number to a free member; past ``max_deliver`` deliveries the consumer gives up on it;
* in-progress restarts the ack wait. Like the JetStream worker, a subscriber sends it for a handler
  still running at half the ack wait, so a slow handler keeps its message;
* an exclusive consumer hands messages to its longest-subscribed member only; a member that stops
  stays the active one until its handlers are done, then the next one takes over;
* acks, naks and terms apply to the message (its stream sequence), whichever delivery they answer: a late
  ack of a message redelivered meanwhile acks it, a late nak redelivers it once more at once.

Every timer goes through the broker's :mod:`~jetstream_fastapi.clock`. Imports nothing from ``nats``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...clock import Timer
from ...core.handling import Action, ConsumerSettings
from ...core.subjects import subject_matches
from ...driver import Delivery, Message
from ..base import ConsumerState, Process

if TYPE_CHECKING:
    from .backend import MemoryBackend, MemoryStream, StoredMessage


@dataclass(slots=True, eq=False)
class _Pending:
    """A message delivered to a consumer and not yet acked or terminated."""

    stored: StoredMessage
    delivered: int = 0  # deliveries so far: the attempt number of the latest
    timer: Timer | None = None  # the ack wait, or the end of a nak delay
    queued: bool = False  # in the redelivery queue
    forced: bool = False  # handed out again by faults.redeliver(), whatever max_deliver says


class MemoryConsumer:
    """One consumer's state: new messages, pending ones, due redeliveries; survives its members if durable."""

    def __init__(
        self,
        backend: MemoryBackend,
        stream: MemoryStream,
        name: str,
        filter: str,
        settings: ConsumerSettings,
        *,
        durable: bool,
    ) -> None:
        self.backend = backend
        self.stream = stream
        self.name = name
        self.filter = filter
        self.settings = settings
        self.max_deliver = settings.max_deliver
        """The consumer's own limit on deliveries (the spec's ``store_max_deliver``)."""
        self.durable = durable
        self.exclusive = False
        """One member at a time gets messages: ``members[0]`` (see :mod:`~jetstream_fastapi.core.exclusive`)."""
        self.members: list[MemoryMember] = []
        self.waiting: deque[StoredMessage] = deque()  # never delivered
        self.pending: dict[int, _Pending] = {}  # stream sequence -> delivered, not yet acked or terminated
        self.redeliveries: deque[_Pending] = deque()
        # Acked, terminated or given up, with its deliveries: what faults.redeliver() may hand out again.
        self.done: dict[int, int] = {}
        self.last_delivered = 0  # the highest stream sequence delivered so far
        self.last_active: _dt.datetime | None = None
        self._next_member = 0
        self.paused_until: _dt.datetime | None = None  # broker.pause(): nothing is delivered until then
        self._pause_timer: Timer | None = None
        policy = settings.deliver_policy or ("all" if durable else "new")
        # Deleted (or expired) messages are gone from the stream, as on a server; schedules are not for handlers.
        backlog = [
            m
            for m in stream.messages
            if m.seq not in stream.deleted and m.seq not in stream.schedules and subject_matches(filter, m.subject)
        ]
        self.waiting.extend(backlog[-1:] if policy == "last" else backlog if policy == "all" else [])

    # -- delivering --------------------------------------------------------------------------------

    def pause(self, until: _dt.datetime | None) -> None:
        """Deliver nothing until ``until`` (wall time, counted on the backend's clock from now); ``None``
        resumes at once. As on a server, messages already delivered stay with their handlers."""
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None
        self.paused_until = until
        if until is not None:
            delay = (until - _dt.datetime.now(_dt.UTC)).total_seconds()
            self._pause_timer = self.backend.clock.call_later(max(0.0, delay), lambda: self.pause(None))
        else:
            self.dispatch()

    def enqueue(self, stored: StoredMessage) -> None:
        """A new message on the consumer's filter."""
        self.waiting.append(stored)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand due redeliveries, then new messages (within ``max_ack_pending``), to free members."""
        if not self.backend.faults.connection_dropped and self.paused_until is None:
            while self.redeliveries or (self.waiting and len(self.pending) < self.settings.max_ack_pending):
                member = self._free_member()
                if member is None:
                    break
                pending = self._next()
                if pending is None:
                    break
                pending.delivered += 1
                self.last_delivered = max(self.last_delivered, pending.stored.seq)
                self.last_active = _dt.datetime.now(_dt.UTC)
                self._arm(pending, self.settings.ack_wait)
                member.start(pending.stored, pending.delivered)

    def _next(self) -> _Pending | None:
        settings = self.settings
        while self.redeliveries:
            pending = self.redeliveries.popleft()
            pending.queued = False
            seq = pending.stored.seq
            if self.pending.get(seq) is not pending:
                continue  # acked or terminated while it waited
            limit = self.max_deliver
            if limit != -1 and pending.delivered >= limit and not pending.forced:
                # As the server: past max_deliver the consumer stops delivering it (it stays in the stream).
                del self.pending[seq]
                self.done[seq] = pending.delivered
                continue
            pending.forced = False
            return pending
        if self.waiting and len(self.pending) < settings.max_ack_pending:
            stored = self.waiting.popleft()
            pending = self.pending[stored.seq] = _Pending(stored)
            return pending
        return None

    def _free_member(self) -> MemoryMember | None:
        if self.exclusive:
            active = self.members[0] if self.members else None
            return active if active is not None and active.has_room() else None
        count = len(self.members)
        for offset in range(count):
            member = self.members[(self._next_member + offset) % count]
            if member.has_room():
                self._next_member = (self._next_member + offset + 1) % count
                return member
        return None

    # -- timers --------------------------------------------------------------------------------------

    def _arm(self, pending: _Pending, delay: float) -> None:
        """(Re)start the ack wait (or a nak delay) of ``pending``; when it ends, the message is redelivered."""
        if pending.timer is not None:
            pending.timer.cancel()
        pending.timer = self.backend.clock.call_later(delay, lambda: self._due(pending))

    def _due(self, pending: _Pending) -> None:
        pending.timer = None
        if self.pending.get(pending.stored.seq) is pending and not pending.queued:
            self._queue(pending)
            self.dispatch()

    def _queue(self, pending: _Pending) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        pending.queued = True
        self.redeliveries.append(pending)

    # -- what the server receives ----------------------------------------------------------------------

    def send(self, action: Action | None, seq: int, delay: float = 0.0) -> None:
        """A member answers for message ``seq`` (``None``: in progress), through the broker's connection,
        which may lose it (:meth:`~.faults.Faults.lose_acks`) or hold it until it is restored."""
        self.backend.faults._transmit(lambda: self._receive(action, seq, delay), ack=action is Action.ACK)

    def _receive(self, action: Action | None, seq: int, delay: float) -> None:
        pending = self.pending.get(seq)
        if pending is None:
            return  # already acked or terminated: the server ignores it too
        if action is None:
            if not pending.queued:
                self._arm(pending, self.settings.ack_wait)
            return
        if action is Action.NAK:
            if pending.queued:
                return
            if delay > 0:
                self._arm(pending, delay)  # stays pending, as on the server: it holds its max_ack_pending slot
            else:
                self._queue(pending)
        else:
            if pending.timer is not None:
                pending.timer.cancel()
            del self.pending[seq]
            self.done[seq] = pending.delivered
        # The sender dispatches next (its slot is free too): one pass instead of two.

    def redeliver(self, seq: int) -> bool:
        """Deliver message ``seq`` again although it was acked (fault injection), with the next attempt
        number, as a restarted server that lost the ack does; False if it is not done."""
        if seq not in self.done:
            return False
        delivered = self.done.pop(seq)
        pending = self.pending[seq] = _Pending(self.stream.messages[seq - 1], delivered, forced=True)
        self._queue(pending)
        self.dispatch()
        return True

    def state(self) -> ConsumerState:
        """What a server's consumer info would say of this consumer now."""
        unsettled = [*self.pending, *(stored.seq for stored in self.waiting)]
        floor = min(unsettled) - 1 if unsettled else self.last_delivered
        return ConsumerState(
            stream=self.stream.name,
            name=self.name,
            pending=len(self.waiting),
            ack_pending=len(self.pending),
            redelivered=sum(1 for pending in self.pending.values() if pending.delivered > 1),
            delivered_stream_seq=self.last_delivered,
            ack_floor_stream_seq=floor,
            last_active=self.last_active,
            paused=self.paused_until is not None,
            paused_until=self.paused_until,
        )

    def idle(self) -> bool:
        """Nothing pending or waiting, and no member's handler running; a consumer without members is idle."""
        if not self.members:
            return True
        return not self.pending and not self.waiting and not any(member.in_flight for member in self.members)


class MemoryMember:
    """One subscriber of a :class:`MemoryConsumer`: runs the front's ``process`` on what it is handed."""

    def __init__(self, backend: MemoryBackend, consumer: MemoryConsumer, process: Process, settings: ConsumerSettings):
        self._backend = backend
        self._consumer = consumer
        self._process = process
        self._settings = settings
        self._tasks: set[asyncio.Task[None]] = set()
        self.running = True

    @property
    def state(self) -> str:
        return "running" if self.running else "stopped"

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def active(self) -> bool | None:
        consumer = self._consumer
        return (bool(consumer.members) and consumer.members[0] is self) if consumer.exclusive else None

    @property
    def last_error(self) -> str | None:
        return None  # no network to fail: handler errors are the message's fate, not the consumer's

    @property
    def counters(self) -> Counter[str]:
        return Counter()  # no network: none of the worker's rare paths exist here

    async def idle(self) -> bool:
        return self._consumer.idle()

    def has_room(self) -> bool:
        """Whether it takes another message now (running, and fewer handlers than its concurrency)."""
        return self.running and len(self._tasks) < self._settings.concurrency

    def start(self, stored: StoredMessage, attempt: int) -> None:
        """Process delivery ``attempt`` of ``stored``."""
        task = asyncio.get_running_loop().create_task(self._run(stored, attempt))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, stored: StoredMessage, attempt: int) -> None:
        consumer, seq = self._consumer, stored.seq
        delivery = Delivery(consumer.stream.name, seq, attempt, stored.timestamp_ns, consumer.name)
        message = Message(body=stored.body, headers=dict(stored.headers), subject=stored.subject, delivery=delivery)
        # As the JetStream worker's watchdog: "in progress" for a handler still running at half the ack wait.
        half = self._settings.ack_wait / 2
        clock = self._backend.clock

        refresh: list[Timer] = []

        def keep_alive() -> None:
            consumer.send(None, seq)
            refresh[:] = [clock.call_later(half, keep_alive)]

        refresh.append(clock.call_later(half, keep_alive))
        try:
            verdict = await self._process(message)
        except asyncio.CancelledError:
            consumer.send(Action.NAK, seq)  # shutdown timeout: given back at once, as the worker does
            raise
        finally:
            refresh[0].cancel()
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)
        consumer.send(verdict.action, seq, verdict.delay)
        consumer.dispatch()  # this member's slot is free, whatever became of the answer

    async def stop(self, timeout: float) -> None:
        """Stop taking messages, let running handlers finish within ``timeout``, give back the rest. A
        durable consumer keeps its place; an ephemeral one is removed with its last member."""
        if not self.running:
            return
        self.running = False
        consumer = self._consumer
        if not consumer.exclusive:
            consumer.members.remove(self)
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if consumer.exclusive:  # the active member hands over only once its handlers are done
            consumer.members.remove(self)
        if not consumer.durable and not consumer.members:
            self._backend.consumers.pop((consumer.stream.name, consumer.name), None)
        consumer.dispatch()

    def __repr__(self) -> str:
        return f"MemoryMember(consumer={self._consumer.name!r}, running={self.running})"
