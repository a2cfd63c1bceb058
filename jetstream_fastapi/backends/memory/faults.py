"""Fault injection for the in-memory broker: ``broker.faults``, for proving what your handlers survive.

Each fault does what its real counterpart does to a :class:`~jetstream_fastapi.JetStreamBroker` (see the
README's delivery guarantee)::

    broker.faults.redeliver(ack)            # an acked message comes again (as after a server crash)
    broker.faults.fail_publishes(2)         # the next 2 publishes raise PublishTimeoutError
    broker.faults.lose_acks(1)              # the next ack never arrives: redelivered after ack_wait
    broker.faults.fail_replies(1)           # the next reply to a request cannot be sent: redelivered
    broker.faults.drop_connection()         # is_connected False, publishes wait, consumers pause
    broker.faults.restore_connection()      # everything held is sent; consumers resume

Imports nothing from ``nats``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ...driver import PubAck
from ...errors import InvalidArgumentError, JetStreamError, NotConnectedError, PublishTimeoutError

if TYPE_CHECKING:
    from ...clock import Clock


class _Consumer(Protocol):
    """What faults do to a consumer on the server: hand a message out again, resume delivering."""

    def redeliver(self, seq: int) -> int: ...

    def dispatch(self) -> None: ...


def _count(count: int) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InvalidArgumentError(f"count must be a positive integer, got {count!r}")
    return count


@dataclass(slots=True, eq=False)
class _Held:
    """A publish written while the connection was down: sent (stored) when it is restored."""

    store: Callable[[], PubAck]
    waiter: asyncio.Future[PubAck]


class Faults:
    """The faults of one :class:`~jetstream_fastapi.InMemoryBroker` (its ``faults`` attribute)."""

    def __init__(self, consumers: Mapping[tuple[str, str], _Consumer], clock: Clock) -> None:
        self._consumers = consumers  # the server's, by (stream, name)
        self._clock = clock
        self._failing: list[bool] = []  # one entry per publish to fail: whether it is stored anyway
        self._lost_acks = 0
        self._failing_replies = 0
        self._dropped = False
        self._outbox: list[Callable[[], None]] = []  # acks, naks, terms, in-progress held while dropped
        self._held: list[_Held] = []
        self.restored = 0
        """Times :meth:`restore_connection` ended a drop (the memory broker's reconnect count)."""

    # -- the faults ----------------------------------------------------------------------------------

    def redeliver(self, ack: PubAck, *, queue: str | None = None) -> int:
        """Deliver the message of ``ack`` again to every consumer that had finished with it (acked or
        dead-lettered it), or to the durable ``queue`` only: the same stream sequence and msg id, the next
        attempt number, as a server restarted after a crash delivers a message whose ack it lost. Returns
        how many consumers got it; ``LookupError`` if none had finished with it (still pending, or not on
        that stream)."""
        if not isinstance(ack, PubAck):
            raise InvalidArgumentError(f"redeliver() takes the PubAck of a publish, got {ack!r}")
        consumers = [
            consumer
            for (stream, name), consumer in self._consumers.items()
            if stream == ack.stream and (queue is None or name == queue)
        ]
        handed = sum(consumer.redeliver(ack.seq) for consumer in consumers)
        if not handed:
            where = f"queue {queue!r}" if queue is not None else "any consumer"
            raise LookupError(f"message {ack.stream}#{ack.seq} was not handled to its end by {where}")
        return handed

    def fail_publishes(self, count: int = 1, *, stored: bool = False) -> None:
        """Make the next ``count`` publishes raise :class:`PublishTimeoutError`, the error a real broker
        raises when a transient failure outlasts the publish deadline. With ``stored=True`` the message is
        stored nevertheless (the doubt a real timeout leaves): a retry with the same ``msg_id`` is then
        answered as a duplicate. Each message of a ``publish_many`` counts as one publish."""
        self._failing.extend([stored] * _count(count))

    def lose_acks(self, count: int = 1) -> None:
        """Lose the next ``count`` acks on their way to the server: each message comes back with the next
        attempt number once its ``ack_wait`` has passed (as after a connection lost right after the handler)."""
        self._lost_acks += _count(count)

    def fail_replies(self, count: int = 1) -> None:
        """Make the next ``count`` replies to requests fail to be sent (as nats-py refuses a publish when its
        reconnect buffer is full): the request is not acked, so it is handled again."""
        self._failing_replies += _count(count)

    def drop_connection(self) -> None:
        """Lose the connection, as a real broker does when the server goes away: ``is_connected`` and
        ``ping()`` say False, consumers get nothing new, a publish waits for the connection until its
        timeout and then raises :class:`PublishTimeoutError` (it is still sent when the connection comes
        back, as nats-py sends its buffer: publish again with the same ``msg_id``). Handlers already
        running finish; their acks wait for the connection, while the ack wait of their messages runs."""
        self._dropped = True

    def restore_connection(self) -> None:
        """Reconnect: the held acks and publishes are sent in order, then consumers resume."""
        if not self._dropped:
            return
        self._dropped = False
        self.restored += 1
        outbox, self._outbox = self._outbox, []
        for answer in outbox:
            answer()
        held, self._held = self._held, []
        for publish in held:
            try:
                result = publish.store()
            except JetStreamError as error:  # a condition that no longer holds, for instance
                if not publish.waiter.done():
                    publish.waiter.set_exception(error)
                continue
            if not publish.waiter.done():
                publish.waiter.set_result(result)
        for consumer in list(self._consumers.values()):
            consumer.dispatch()

    @property
    def connection_dropped(self) -> bool:
        """Whether :meth:`drop_connection` is in effect."""
        return self._dropped

    def __repr__(self) -> str:
        return (
            f"Faults(connection_dropped={self._dropped}, failing_publishes={len(self._failing)}, "
            f"lost_acks={self._lost_acks})"
        )

    # -- the broker's hooks ----------------------------------------------------------------------------

    async def _publish(self, store: Callable[[], PubAck], subject: str, msg_id: str, timeout: float) -> PubAck:
        """Store a message through the faults: fail it, hold it while dropped, or store it now."""
        if self._failing:
            if self._failing.pop(0):
                store()
            raise PublishTimeoutError(subject, timeout, msg_id)
        if not self._dropped:
            return store()
        waiter: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._held.append(_Held(store, waiter))

        def expire() -> None:
            if not waiter.done():
                waiter.set_exception(PublishTimeoutError(subject, timeout, msg_id))

        timer = self._clock.call_later(timeout, expire)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _reply(self, address: str) -> None:
        """A reply about to be sent: fail it if :meth:`fail_replies` says so."""
        if self._failing_replies:
            self._failing_replies -= 1
            raise NotConnectedError(f"the reply to {address!r} could not be sent (faults.fail_replies)")

    def _transmit(self, answer: Callable[[], None], *, ack: bool) -> None:
        """An ack, nak, term or in-progress on its way to the server."""
        if ack and self._lost_acks:
            self._lost_acks -= 1
            return
        if self._dropped:
            self._outbox.append(answer)
            return
        answer()

    def _closed(self) -> None:
        """``disconnect()``: what was held dies with the connection."""
        self._dropped = False
        self._outbox.clear()
        held, self._held = self._held, []
        for publish in held:
            if not publish.waiter.done():
                publish.waiter.set_exception(NotConnectedError("the broker was disconnected"))
