"""Per-key ordering: ``key_order=True, partitions=N`` on a queue.

The key of a message is the value of the subject's ``*`` tokens (``orders.*.events``: the order id). Every
key belongs to one of ``partitions`` partitions (CRC-32 of the key, modulo ``partitions``: the same in every
process). The design, written once here for both backends:

* each partition is a durable consumer of its own, ``<queue>-p<i>``, on the queue's subject, with
  ``max_ack_pending=1``: the store hands out one message of it at a time, across every instance, and a
  message still unacked (its handler running, a nak delay, an ack wait running out, a dead instance's
  ack wait) holds the partition until it is acked, dead-lettered or terminated;
* each consumer sees every message of the subject; an instance handles the messages of its partition's
  keys and acks the others at once, unhandled (the partition is not theirs);
* every instance runs every partition (one pull worker each), so whichever instance is alive takes the
  next message of a partition.

Guarantees: the messages of one key are handled one at a time, in stream order, across every instance,
through naks and backoff (the failed message comes back before any later one of its partition), ack-wait
redeliveries and the crash of an instance; a dead-lettered message lets its key go on. Different
partitions run in parallel: at most ``partitions`` handlers at once across all instances.

Limits: keys of one partition wait for each other (up to ``partitions`` keys run at once); every message
is delivered once to each partition's consumer (``partitions`` deliveries, one handled), so throughput is
bounded by ``partitions`` round trips per message and falls as ``partitions`` grows (measured, one
instance, 64 keys, 1 ms handlers: 10-13% of a plain queue's rate at the same parallelism of 16); ``concurrency``,
``max_ack_pending`` and ``batch_size`` are set by the mode and refused as options. ``partitions`` is fixed
for the life of the queue: a different number would move keys to other partitions, so subscribing with
another one raises :class:`~jetstream_fastapi.errors.InvalidArgumentError` with the migration (let the old
partitions drain, delete the ``<queue>-p*`` consumers, subscribe with the new number).
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from ..driver import Handler, Message
from ..errors import InvalidArgumentError
from .handling import ConsumerSettings
from .subscription import Subscription

if TYPE_CHECKING:
    from .broker import BaseBroker

DEFAULT_PARTITIONS = 16
MAX_PARTITIONS = 256
SET_BY_THE_MODE = ("concurrency", "max_ack_pending", "batch_size")


def check_key_order(key_order: object, partitions: object, queue: str | None, subject: str, options: object) -> int:
    """The number of partitions, checked (0: not key-ordered); raises before anything reaches the store."""
    if not isinstance(key_order, bool):
        raise InvalidArgumentError(f"key_order must be True or False, got {key_order!r}")
    if not key_order:
        if partitions is not None:
            raise InvalidArgumentError("partitions is for key_order=True")
        return 0
    count = DEFAULT_PARTITIONS if partitions is None else partitions
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_PARTITIONS:
        raise InvalidArgumentError(f"partitions must be an integer from 1 to {MAX_PARTITIONS}, got {partitions!r}")
    if queue is None:
        raise InvalidArgumentError("key_order=True needs a queue: the order holds across the queue's instances")
    if "*" not in subject.split("."):
        raise InvalidArgumentError(f"key_order=True needs a '*' in the subject (the key), got {subject!r}")
    given = [name for name in SET_BY_THE_MODE if name in options]  # type: ignore[operator]
    if given:
        raise InvalidArgumentError(f"key_order=True sets {', '.join(given)} itself (one message per partition)")
    return count


def key_of(filter: str, subject: str) -> str:
    """The key of ``subject`` under ``filter``: its tokens at the filter's ``*`` positions, joined by ``.``."""
    tokens = subject.split(".")
    return ".".join(tokens[i] for i, token in enumerate(filter.split(".")) if token == "*" and i < len(tokens))


def partition_of(key: str, partitions: int) -> int:
    """The partition of ``key`` (CRC-32: the same in every process and version of Python)."""
    return zlib.crc32(key.encode()) % partitions


def consumer_name(queue: str, partition: int) -> str:
    """The durable consumer of one partition."""
    return f"{queue}-p{partition}"


def partition_handler(handler: Handler, filter: str, partition: int, partitions: int) -> Handler:
    """``handler`` for the messages of ``partition``'s keys; the others return at once (acked, unhandled)."""

    async def handle(msg: Message) -> object:
        if partition_of(key_of(filter, msg.subject), partitions) == partition:
            return await handler(msg)  # the reply, if the message is a request
        return None

    return handle


def changed_partitions(queue: str, partitions: int, existing: Collection[str]) -> str | None:
    """Why the queue's partitions differ from ``partitions`` (``None``: a new queue, or the same number),
    given which of its consumers ``<queue>-p0``, ``-p<partitions - 1>``, ``-p<partitions>`` exist. The
    partitions are created last to first, so ``<queue>-p0`` exists only once all of them do."""
    if consumer_name(queue, 0) not in existing:
        return None
    if consumer_name(queue, partitions) in existing or consumer_name(queue, partitions - 1) not in existing:
        return (
            f"queue {queue!r} was created with another number of partitions than {partitions}, and keys would "
            f"move to other partitions. To change it: stop publishing, let every partition drain, delete the "
            f"consumers {queue}-p0 ... on the stream, then subscribe with partitions={partitions}"
        )
    return None


async def subscribe_partitioned(
    broker: BaseBroker, subject: str, handler: Handler, queue: str, partitions: int, options: dict[str, Any]
) -> PartitionedSubscription:
    """Subscribe every partition of a key-ordered queue (last to first), or none of them."""
    stream = await broker._backend.stream_for(subject)
    existing = set()
    for index in {0, partitions - 1, partitions}:
        name = consumer_name(queue, index)
        if await broker._backend.consumer_state(stream, name) is not None:
            existing.add(name)
    problem = changed_partitions(queue, partitions, existing)
    if problem is not None:
        raise InvalidArgumentError(problem)
    parts: list[Subscription] = []
    try:
        for index in reversed(range(partitions)):
            part = partition_handler(handler, subject, index, partitions)
            parts.append(
                await broker.subscribe(
                    subject,
                    part,
                    queue=consumer_name(queue, index),
                    **options,
                    concurrency=1,
                    max_ack_pending=1,
                    batch_size=1,
                )
            )
    except BaseException:
        for made in parts:
            await made.unsubscribe()
        raise
    parts.reverse()

    async def stop() -> None:
        await asyncio.gather(*(made.unsubscribe() for made in parts))

    return PartitionedSubscription(parts, stop)


class PartitionedSubscription:
    """The subscriptions of a key-ordered queue's partitions, as one (what ``subscribe`` returns)."""

    def __init__(self, parts: Sequence[Subscription], stop: Callable[[], Awaitable[None]]) -> None:
        self.parts = list(parts)
        self._stop = stop

    @property
    def subject(self) -> str:
        """The subject (or wildcard filter) it consumes."""
        return self.parts[0].subject

    @property
    def queue(self) -> str | None:
        """The queue the partitions' consumers are named after."""
        name = self.parts[0].queue
        return None if name is None else name.rsplit("-p", 1)[0]

    @property
    def stream(self) -> str:
        """The stream it consumes from."""
        return self.parts[0].stream

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
        """Handlers running now, over every partition (skipped messages included)."""
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
