"""What ``subscribe(..., key_order=True)`` returns: the partitions of a key-ordered queue, as one
(see :mod:`~jetstream_fastapi.core.keyorder`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from .handling import ConsumerSettings
from .subscription import Subscription


class PartitionedSubscription:
    """The subscriptions of a key-ordered queue's partitions, as one."""

    def __init__(
        self, subject: str, queue: str, source: str, parts: Sequence[Subscription], stop: Callable[[], Awaitable[None]]
    ) -> None:
        self._subject = subject
        self._queue = queue
        self.source = source
        """The stream the messages are published to and sourced from."""
        self.parts = list(parts)
        """One subscription per partition, ``parts[i]`` consuming ``<queue>-p<i>``."""
        self._stop = stop

    @property
    def subject(self) -> str:
        """The subject (or wildcard filter) it consumes."""
        return self._subject

    @property
    def queue(self) -> str:
        """The queue the partitions' consumers are named after."""
        return self._queue

    @property
    def stream(self) -> str:
        """The queue's partitioned stream, derived from :attr:`source`, that the partitions consume."""
        return self.parts[0].stream

    @property
    def consumer_name(self) -> str:
        """The queue: each partition's consumer is named after it (``<queue>-p<i>``)."""
        return self._queue

    @property
    def partitions(self) -> int:
        """How many partitions the keys are spread over."""
        return len(self.parts)

    @property
    def settings(self) -> ConsumerSettings:
        """The consumer options of each partition."""
        return self.parts[0].settings

    @property
    def state(self) -> str:
        """``"running"`` when every partition runs; otherwise the state of the first that does not."""
        for part in self.parts:
            if part.state != "running":
                return part.state
        return "running"

    @property
    def running(self) -> bool:
        """Whether every partition takes messages."""
        return self.state == "running"

    @property
    def in_flight(self) -> int:
        """Handlers running now, over every partition."""
        return sum(part.in_flight for part in self.parts)

    @property
    def active(self) -> bool | None:
        """``None``: every instance runs every partition."""
        return None

    @property
    def last_error(self) -> str | None:
        """The last problem a partition's consumer met, or ``None``."""
        return next((part.last_error for part in self.parts if part.last_error), None)

    @property
    def counters(self) -> Counter[str]:
        """The partitions' counters, added up."""
        total: Counter[str] = Counter()
        for part in self.parts:
            total += part.counters
        return total

    async def unsubscribe(self) -> None:
        """Stop every partition (running handlers finish within the broker's ``shutdown_timeout``)."""
        await self._stop()

    def __repr__(self) -> str:
        return f"PartitionedSubscription(subject={self.subject!r}, queue={self.queue!r}, partitions={len(self.parts)})"
