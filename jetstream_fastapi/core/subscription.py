"""A running subscription: what ``subscribe`` returns, the same for every backend."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..backends.base import Consumer, ConsumerSpec
from .handling import ConsumerSettings
from .processing import Processor

if TYPE_CHECKING:
    from ..driver import Subscriber


class Subscription:
    """A running consumer; ``unsubscribe()`` stops it (durable consumers stay on the server)."""

    def __init__(
        self,
        spec: ConsumerSpec,
        queue: str | None,
        consumer: Consumer,
        processor: Processor,
        shutdown_timeout: float,
        stopped: Callable[[Subscription], None],
    ) -> None:
        self._shutdown_timeout = shutdown_timeout
        self._stopped = stopped  # tells the broker this subscription is gone from its registry
        self._spec = spec
        self._queue = queue
        self.consumer = consumer
        self._processor = processor
        self.group: Subscriber | None = None
        """For a partition of a key-ordered queue: the queue's subscription, all partitions as one."""

    @property
    def subject(self) -> str:
        """The subject (or wildcard filter) it consumes."""
        return self._spec.subject

    @property
    def queue(self) -> str | None:
        """The durable consumer's name, or ``None`` for an ephemeral consumer."""
        return self._queue

    @property
    def stream(self) -> str:
        """The stream it consumes from."""
        return self._spec.stream

    @property
    def settings(self) -> ConsumerSettings:
        """Its consumer options, resolved (the broker's defaults with the subscription's options)."""
        return self._processor.settings

    @property
    def consumer_name(self) -> str:
        """The consumer's name on the server (the queue, or a generated ephemeral name)."""
        return self._spec.name

    @property
    def running(self) -> bool:
        """Whether it takes messages."""
        return self.consumer.state == "running"

    @property
    def state(self) -> str:
        """``"new"``, ``"running"``, ``"stopping"`` or ``"stopped"`` (for health probes)."""
        return self.consumer.state

    @property
    def in_flight(self) -> int:
        """Handlers of this subscription running now."""
        return self.consumer.in_flight

    @property
    def active(self) -> bool | None:
        """With ``exclusive=True``: whether this instance is the one handling the queue's messages now
        (the others stand by); ``None`` for a subscription that is not exclusive."""
        return self.consumer.active

    @property
    def last_error(self) -> str | None:
        """The last problem the consumer met (a refused pull, a failed recreate), or ``None``."""
        return self.consumer.last_error or self._processor.last_error

    @property
    def counters(self) -> Counter[str]:
        """How often each rare path was taken (a dead letter that could not be stored, a delivery past
        ``max_deliver``, a failed in-progress or ack, ...), for metrics and health probes."""
        return self._processor.counters + self.consumer.counters

    async def unsubscribe(self) -> None:
        """Stop taking messages at once, let running handlers finish within the broker's
        ``shutdown_timeout``, give back the messages not started. An ephemeral consumer is deleted."""
        self._processor.stopping.set()  # a message held for its dead letter is given back now
        await self.consumer.stop(self._shutdown_timeout)
        self._stopped(self)

    def __repr__(self) -> str:
        return f"Subscription(subject={self.subject!r}, queue={self._queue!r}, state={self.state!r})"
