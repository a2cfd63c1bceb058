"""The consuming side of the broker's front: ``subscribe`` (plain, exclusive, key-ordered), the subscription
registry, storing dead letters, and waiting until every consumer is idle.

:class:`Consuming` is a base of :class:`~jetstream_fastapi.core.broker.BaseBroker`; what happens to each
delivered message is :class:`~jetstream_fastapi.core.processing.Processor`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from typing import TYPE_CHECKING, Any, Literal, Unpack, overload

from ..backends.base import ConsumerSpec, PartitionedStream
from ..driver import ConsumerOptions, Handler, Message
from ..errors import InvalidArgumentError, JetStreamError, NoStreamError
from ..observability.logs import message_extra
from .deadletters import DEAD_LETTER_STREAM, dead_letter, dead_letter_msg_id, dead_letter_subject, permanent
from .exclusive import check_exclusive
from .front import Front
from .handling import Verdict, check_handler, check_one_filter
from .keyorder import OriginalSubject, check_key_order, check_same, consumer_name, derived_stream_name
from .partitioned import PartitionedSubscription
from .processing import DeadLetterOutcome, Processor, ProcessorFactory, store_max_deliver
from .publish_options import check_server_version
from .subjects import check_queue, check_subject
from .subscription import Subscription

if TYPE_CHECKING:
    from .requests import Replier

logger = logging.getLogger("jetstream_fastapi")


class Consuming(Front):
    """``subscribe`` and what the consumers need from the front (see the module docstring)."""

    _replier: Replier  # answers requests (set by the broker)

    @overload
    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        exclusive: bool = False,
        key_order: Literal[False] = False,
        partitions: None = None,
        **options: Unpack[ConsumerOptions],
    ) -> Subscription: ...

    @overload
    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        exclusive: bool = False,
        key_order: Literal[True],
        partitions: int | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> PartitionedSubscription: ...

    @overload
    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        exclusive: bool = False,
        key_order: bool = False,
        partitions: int | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> Subscription | PartitionedSubscription: ...

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        exclusive: bool = False,
        key_order: bool = False,
        partitions: int | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> Subscription | PartitionedSubscription:
        """Start a consumer running ``handler`` for each message on ``subject``.

        With ``queue``, a durable consumer of that name is shared by every instance using it (load
        balancing; it resumes where it stopped). Without, each call gets an ephemeral consumer that sees
        every new message; it is deleted on ``unsubscribe`` (or by the server after inactivity).
        With ``exclusive=True`` (needs ``queue``), one instance of the queue handles messages at a time and
        the others stand by (see :mod:`~jetstream_fastapi.core.exclusive`). With ``key_order=True`` (needs
        ``queue``), the messages of one key (the subject's ``*`` tokens) are handled one at a time in stream
        order across every instance, over ``partitions`` partitions (see :mod:`~jetstream_fastapi.core.keyorder`).
        """
        check_subject(subject, wildcards=True, max_length=self._preparer.max_subject)
        if queue is not None:
            check_queue(queue)
        check_exclusive(exclusive, queue)
        count = check_key_order(key_order, partitions, queue, subject, options)
        if count and exclusive:
            raise InvalidArgumentError("key_order=True and exclusive=True do not go together")
        check_handler(handler)
        settings = self.defaults.merged(options)
        self._require()
        if exclusive:
            check_server_version(["exclusive consumers"], self._backend.server_version)
        if count:
            assert queue is not None
            return await self._below(self._subscribe_partitioned(subject, handler, queue, count, dict(options)))
        stream = await self._below(self._backend.stream_for(subject))
        if queue is not None:
            running = ((sub.stream, sub.queue, sub.subject) for sub in self._subscriptions)
            check_one_filter(queue, subject, stream, running)
        name = queue or f"ephemeral-{uuid.uuid4().hex[:16]}"
        spec = ConsumerSpec(stream, name, subject, settings, queue is not None, store_max_deliver(settings), exclusive)
        return await self._below(self._consume(spec, handler, queue, subject))

    async def _consume(
        self,
        spec: ConsumerSpec,
        handler: Handler,
        queue: str | None,
        watched: str,
        kind: ProcessorFactory = Processor,
    ) -> Subscription:
        """Start the consumer ``spec`` with a ``kind`` of processor running ``handler``; its spans and metrics
        name ``watched`` (the subject the handler sees) and ``queue``."""
        if spec.settings.dead_letter:
            await self._backend.ensure_dead_letter_stream()
        watch = self._observer.consumer(watched, queue) if self._observer is not None else None
        processor = kind(handler, spec.settings, self._store_dead_letter, self._settled.set, watch, self._replier)
        consumer = await self._backend.consume(spec, processor)
        queue_name = spec.name if spec.durable else None
        subscription = Subscription(
            spec, queue_name, consumer, processor, self.shutdown_timeout, self._subscriptions.discard
        )
        self._subscriptions.add(subscription)
        logger.info("consuming %s from stream %s as %s", spec.subject, spec.stream, spec.name)
        return subscription

    async def _subscribe_partitioned(
        self, subject: str, handler: Handler, queue: str, partitions: int, options: dict[str, Any]
    ) -> PartitionedSubscription:
        """Provision the queue's derived stream (see :mod:`~jetstream_fastapi.core.keyorder`) and subscribe
        every partition, or none of them."""
        backend = self._backend
        check_server_version(["key order"], backend.server_version)
        source = await backend.stream_for(subject)
        wanted = PartitionedStream(
            derived_stream_name(source, queue), source, subject, partitions, options.get("deliver_policy") == "new"
        )
        check_same(queue, wanted, await backend.ensure_partitioned_stream(wanted))
        # concurrency: handler runs at once in this instance, across its partitions (default: one each).
        concurrency = self.defaults.merged({"concurrency": options.get("concurrency", partitions)}).concurrency
        slots = asyncio.Semaphore(concurrency) if concurrency < partitions else None
        settings = self.defaults.merged(
            {**options, "concurrency": 1, "max_ack_pending": 1, "batch_size": 1, "deliver_policy": "all"}
        )
        kind = functools.partial(OriginalSubject, slots=slots)
        parts: list[Subscription] = []
        try:
            for index in range(partitions):
                name, limit = consumer_name(queue, index), store_max_deliver(settings)
                spec = ConsumerSpec(wanted.name, name, f"{index}.>", settings, True, limit, sourced=wanted)
                parts.append(await self._consume(spec, handler, queue, subject, kind))
        except BaseException:
            for made in parts:
                await made.unsubscribe()
            raise

        async def stop() -> None:
            await asyncio.gather(*(made.unsubscribe() for made in parts))

        grouped = PartitionedSubscription(subject, queue, source, parts, stop)
        for part in parts:
            part.group = grouped
        return grouped

    @property
    def subscriptions(self) -> list[Subscription]:
        """The running subscriptions."""
        return list(self._subscriptions)

    async def _store_dead_letter(self, message: Message, verdict: Verdict) -> DeadLetterOutcome:
        """Store a message about to be terminated in the dead-letter stream (recreated if it was deleted).
        ``"retry"`` when that failed for a reason that may pass (the
        :class:`~jetstream_fastapi.core.processing.Processor` then holds the message and tries again),
        ``"lost"`` when the server refused it for good (the message is terminated, counted, logged)."""
        delivery = message.delivery
        assert delivery is not None
        letter = dead_letter(message, verdict.error, self._backend.max_payload)
        subject = dead_letter_subject(delivery.stream, delivery.consumer)
        msg_id = dead_letter_msg_id(delivery.stream, delivery.sequence, delivery.consumer)
        try:
            try:
                # Only into DEAD_LETTERS: never a stream provisioned for the subject, or another one capturing it.
                await self.publish(subject, letter, msg_id=msg_id, expected_stream=DEAD_LETTER_STREAM)
            except NoStreamError:  # deleted (an operator resetting it): recreated, as consumers are
                await self._below(self._backend.ensure_dead_letter_stream())
                await self.publish(subject, letter, msg_id=msg_id, expected_stream=DEAD_LETTER_STREAM)
        except JetStreamError as error:
            where = (delivery.stream, delivery.sequence, message.subject, self._backend.describe(error))
            if permanent(error):
                logger.error(  # noqa: TRY400 - a traceback could carry secrets; describe() redacts
                    "the dead letter of %s#%d (%s) is lost: the server refused it for good, so the message is "
                    "terminated without one: %s",
                    *where,
                    extra=message_extra(message),
                )
                return "lost"
            logger.error(  # noqa: TRY400 - a traceback could carry secrets; describe() redacts
                "could not dead-letter %s#%d (%s); it is held and retried: %s", *where, extra=message_extra(message)
            )
            return "retry"
        return "stored"

    async def wait_until_idle(self, timeout: float = 10.0) -> None:
        """Return once every subscription's consumer has nothing pending, nothing unacked and no handler
        running (for tests: await "everything published was handled"); ``TimeoutError`` after ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                self._settled.clear()
                if await self._idle():
                    return
                # Handlers signal each settled message; the short bound covers redeliveries a server has
                # scheduled (nak delays) that no local event announces.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled.wait(), 0.1)

    async def _idle(self) -> bool:
        self._require()
        subscriptions = list(self._subscriptions)
        if any(sub.in_flight for sub in subscriptions):
            return False
        try:
            for sub in subscriptions:
                if not await sub.consumer.idle():
                    return False
        except JetStreamError:
            raise
        except Exception as error:
            raise self._translate(error) from error
        return True
