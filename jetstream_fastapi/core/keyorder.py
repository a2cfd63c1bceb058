"""Per-key ordering: ``key_order=True, partitions=N`` on a queue.

The key of a message is the value of the subject's ``*`` tokens (``orders.*.events``: the order id). Every
key belongs to one of ``partitions`` partitions, computed by the store itself. The design, written once
here for both backends (the partitioned consumer groups of the NATS maintainers, orbit.go ``pcgroups``):

* **a partitioned stream derived by sourcing**: for a key-ordered queue ``Q`` on subject ``S`` of stream
  ``X``, the library provisions a stream of its own, ``<X>-<Q>-keyorder`` (:func:`derived_stream_name`),
  whose only input is a source on ``X`` with a subject transform from ``S`` to
  ``{{partition(N,1,...)}}.<S with {{wildcard(i)}} for each *>`` (:func:`partition_transform`): the server
  copies each message of ``S`` in stream order and prefixes its subject with its partition, FNV-1a (32
  bits) of the key's tokens concatenated, modulo ``N`` (:func:`partition_of` is the same function in
  Python, so the memory backend and the server agree). ``X`` is untouched: declared, external and
  auto-provisioned streams all work, its stored subjects stay as published, its other consumers see
  nothing of this. The derived stream has work-queue retention: a message is removed once it is acked (or
  dead-lettered), so storage doubles only for what is not handled yet; each partition's consumer filters
  ``<i>.>``, and the server refuses overlapping filters on a work queue. Its replicas and storage are
  those of ``X``. A ``deliver_policy="new"`` queue sources from the time its derived stream is created,
  ``"all"`` (the default) from ``X``'s first message;
* **one durable consumer per partition** on the derived stream, ``<Q>-p<i>``, with ``max_ack_pending=1``:
  the store hands out one message of the partition at a time, across every instance, and a message still
  unacked (its handler running, a nak delay, an ack wait running out, a dead instance's ack wait) holds
  the partition until it is acked, dead-lettered or terminated. Each consumer gets only its own messages;
* every instance runs every partition (one pull worker each), so whichever instance is alive takes the
  next message of a partition.

The handler sees the original subject (the partition token removed: :func:`original_subject`), so
dead letters record it and a replay publishes to it: ``X`` stores the replayed message and the source
copies it again. ``msg.delivery`` names the derived stream, its sequence there and the partition's
consumer (the ack, redelivery and dead-letter bookkeeping are the derived stream's); the header
``Nats-Stream-Source`` the server adds (``X``'s name and sequence) is removed before the handler runs:
a server refuses a publish that carries it, and dead letters and replays republish the headers.

Guarantees: the messages of one key are handled one at a time, in stream order, across every instance,
through naks and backoff (the failed message comes back before any later one of its partition), ack-wait
redeliveries and the crash of an instance; a dead-lettered message lets its key go on. Different
partitions run in parallel: at most ``partitions`` handlers at once across all instances.

Limits: keys of one partition wait for each other (up to ``partitions`` keys run at once, and how evenly
keys spread is up to the hash: the busiest partition bounds a drain). Each partition makes one round
trip per message (``max_ack_pending=1``: the next pull rides on the ack). The server stores each message
once more and removes it on its ack: measured (``bench/bench.py --only keyorder``, 1 ms handlers, a
quiet 2-core machine) 92-144 µs of server CPU per message against 37-53 for a plain queue, and 65-69% of
a plain queue's rate at ``concurrency=16`` with 64 keys over 16 partitions (the hash puts 9.4% of the
messages in the busiest partition: 66% at most), 79-82% over 64 partitions at ``concurrency=16``,
83-89% with 64 keys spread 4 per partition, 85-92% with 1,024 keys.
``concurrency`` bounds the handlers one instance runs at once across its partitions (default
``partitions``, one each; with fewer, the partitions share a semaphore, and a message waiting for a slot
is kept "in progress" like a running handler); ``max_ack_pending`` and ``batch_size`` are set by the mode
and refused as options, as is ``deliver_policy="last"``. ``partitions`` is fixed for the life of the
queue: a different number would move keys to other partitions, so subscribing with another one raises
:class:`~jetstream_fastapi.errors.InvalidArgumentError` with the migration (stop publishing, let every
partition drain, delete the derived stream, subscribe with the new number). Needs nats-server 2.11
(subject transforms in sources arrived in 2.10).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..backends.base import PartitionedStream
from ..driver import Handler, Message
from ..errors import InvalidArgumentError
from .handling import ConsumerSettings, Verdict
from .processing import Processor, StoreDeadLetter
from .subjects import MAX_NAME_LENGTH

if TYPE_CHECKING:
    from ..observability.hooks import ConsumerWatch
    from .requests import Replier

DEFAULT_PARTITIONS = 16
MAX_PARTITIONS = 256
SET_BY_THE_MODE = ("max_ack_pending", "batch_size")
_FNV_OFFSET, _FNV_PRIME = 0x811C9DC5, 0x01000193
STREAM_SOURCE = "Nats-Stream-Source"
"""The header of a sourced message: ``<stream> <seq> <filter> <transform> <subject> <id>`` on a server."""


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
    if options.get("deliver_policy") == "last":  # type: ignore[attr-defined]
        raise InvalidArgumentError("key_order=True takes deliver_policy 'all' or 'new', not 'last'")
    return count


def key_of(filter: str, subject: str) -> str:
    """The key of ``subject`` under ``filter``: its tokens at the filter's ``*`` positions, joined by ``.``."""
    tokens = subject.split(".")
    return ".".join(tokens[i] for i, token in enumerate(filter.split(".")) if token == "*" and i < len(tokens))


def partition_of(key: str, partitions: int) -> int:
    """The partition of ``key``: nats-server's ``partition()`` transform, FNV-1a (32 bits) of the key's
    tokens concatenated (without the dots), modulo ``partitions``."""
    value = _FNV_OFFSET
    for byte in key.replace(".", "").encode():
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value % partitions


def partition_transform(subject: str, partitions: int) -> str:
    """The destination of the subject transform from ``subject``: its partition, then ``subject`` itself."""
    tokens = subject.split(".")
    wildcards = [str(n) for n in range(1, tokens.count("*") + 1)]
    numbered = iter(wildcards)
    rest = ["{{wildcard(" + next(numbered) + ")}}" if token == "*" else token for token in tokens]
    return f"{{{{partition({partitions},{','.join(wildcards)})}}}}." + ".".join(rest)


def original_subject(subject: str) -> str:
    """A derived stream's subject without its partition token: the subject ``X`` stored."""
    return subject.partition(".")[2]


def derived_stream_name(stream: str, queue: str) -> str:
    """The partitioned stream of ``queue`` on ``stream`` (shortened with a hash past the name limit)."""
    name = f"{stream}-{queue}-keyorder"
    if len(name) <= MAX_NAME_LENGTH:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{name[: MAX_NAME_LENGTH - 26]}-{digest}-keyorder"


def consumer_name(queue: str, partition: int) -> str:
    """The durable consumer of one partition."""
    return f"{queue}-p{partition}"


def check_same(queue: str, wanted: PartitionedStream, have: PartitionedStream) -> None:
    """Raise :class:`InvalidArgumentError` when the queue's derived stream was made for something else."""
    if have.partitions != wanted.partitions:
        raise InvalidArgumentError(
            f"queue {queue!r} was created with another number of partitions than {wanted.partitions} "
            f"({have.partitions}), and keys would move to other partitions. To change it: stop publishing, "
            f"let every partition drain, delete the stream {wanted.name}, then subscribe with "
            f"partitions={wanted.partitions}"
        )
    if (have.source, have.subject) != (wanted.source, wanted.subject):
        raise InvalidArgumentError(
            f"queue {queue!r} is key-ordered on {have.subject!r} of stream {have.source!r} (its stream "
            f"{wanted.name}), not on {wanted.subject!r} of {wanted.source!r}: use another queue name"
        )


class OriginalSubject(Processor):
    """The processor of a partition: the handler (and dead letters, spans) see the message as ``X`` stored
    it, its subject without the partition and without the source header (a server refuses a publish
    carrying it, so a dead letter or a replay with it would fail). With ``slots`` (the queue's
    ``concurrency`` below its number of partitions), the partitions of this instance share that many
    handler runs."""

    def __init__(
        self,
        handler: Handler,
        settings: ConsumerSettings,
        store_dead_letter: StoreDeadLetter,
        settled: Callable[[], None],
        watch: ConsumerWatch | None = None,
        replier: Replier | None = None,
        *,
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        super().__init__(handler, settings, store_dead_letter, settled, watch, replier)
        self._slots = slots

    async def __call__(self, message: Message) -> Verdict:
        message.subject = original_subject(message.subject)
        message.headers.pop(STREAM_SOURCE, None)
        if self._slots is None:
            return await super().__call__(message)
        # Waiting here counts as handling for the worker: a wait past half the ack wait is kept "in
        # progress", so the message is not redelivered elsewhere while it waits for a slot.
        async with self._slots:
            return await super().__call__(message)
