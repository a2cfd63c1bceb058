"""What happens to each delivered message, the same for every backend: run the handler, decide its fate,
and never lose it on the way to the dead letters.

A message's fate comes from the rules of :func:`~jetstream_fastapi.core.handling.run_handler` (ack, nak after
a delay, terminate). A terminated message is stored in the dead-letter stream first; if that fails, a nak would not
help on the last attempt (a server does not redeliver past ``max_deliver``), so the message is *held*:
still processing for the backend (which keeps it "in progress" on the server), its dead letter retried
with the consumer's backoff until it is stored. A subscription that stops meanwhile gives it back (nak),
and its next delivery is dead-lettered. For that to work the store's own delivery limit is lifted while
dead-lettering (:func:`store_max_deliver`) and ``max_deliver`` is enforced here instead: a delivery past it is
dead-lettered without running the handler again (its last failure could not be recorded, or its handler
never returned).

A message that is a request (see :mod:`~jetstream_fastapi.core.requests`) is answered here too, before
its verdict goes back to the backend: so the reply leaves before the ack, and an error reply after the
dead letter is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

from ..driver import REPLAY_CONSUMER, Handler, Message
from ..errors import DeliveryLimitError
from ..observability.logs import message_extra
from .handling import ACKED, Action, ConsumerSettings, Verdict, run_handler, verdict_for
from .requests import REPLY_TO, Replier

if TYPE_CHECKING:
    from ..observability.hooks import ConsumerWatch

logger = logging.getLogger("jetstream_fastapi")

DeadLetterOutcome = Literal["stored", "retry", "lost"]
"""What became of a dead letter: stored; not stored for a reason that may pass (the message is held and it
is retried); refused for good (the message is terminated without one, counted in ``dead_letters_lost``)."""
StoreDeadLetter = Callable[[Message, Verdict], Awaitable[DeadLetterOutcome]]
"""Stores a message's dead letter (see :data:`DeadLetterOutcome`)."""
ProcessorFactory = Callable[
    [Handler, ConsumerSettings, StoreDeadLetter, Callable[[], None], "ConsumerWatch | None", "Replier | None"],
    "Processor",
]
"""What builds a subscription's processor: :class:`Processor` itself, or a subclass with its arguments."""


def store_max_deliver(settings: ConsumerSettings) -> int:
    """The delivery limit of the store's consumer: none while dead-lettering (the :class:`Processor`
    enforces ``max_deliver``), so that a held message given back still comes back."""
    return -1 if settings.dead_letter else settings.max_deliver


class Processor:
    """The ``process`` of one subscription (see the module docstring)."""

    def __init__(
        self,
        handler: Handler,
        settings: ConsumerSettings,
        store_dead_letter: StoreDeadLetter,
        settled: Callable[[], None],
        watch: ConsumerWatch | None = None,
        replier: Replier | None = None,
    ) -> None:
        self._handler = handler
        self._replier = replier  # answers requests; None: replies are not sent
        self._settings = settings
        self._timeout = settings.handler_timeout  # None: the handler is awaited here, without run_handler
        self.settings = settings
        """The subscription's resolved consumer settings (``max_deliver`` as the handler sees it)."""
        self._store_dead_letter = store_dead_letter if settings.dead_letter else None
        # Past max_deliver the handler is not run again (see the module docstring); None: no such check.
        self._limit = settings.max_deliver if settings.dead_letter and settings.max_deliver != -1 else None
        self._settled = settled
        self._watch = watch  # spans and metrics (observability), None when both are off
        self.stopping = asyncio.Event()
        """Set when the subscription stops: a held message is given back instead of waiting on."""
        self.counters: Counter[str] = Counter()
        """How often a rare path was taken: ``dead_letter_failed``, ``dead_letters_lost``, ``delivered_past_limit``,
        ``reply_failed``, ``reply_refused`` (a reply address not made by ``request()``: not answered),
        ``replay_skipped``."""
        self.last_error: str | None = None
        """The last message held because its dead letter could not be stored (for health probes)."""

    async def __call__(self, message: Message) -> Verdict:
        # The hot path: without a handler_timeout the handler is awaited right here, its errors decided by
        # verdict_for (run_handler's rules, as a plain function: no second coroutine around the handler's),
        # and the usual outcome, the shared ACKED verdict, is recognised by identity before anything else
        # is looked at. A replay is meant for one consumer: the others settle it unhandled (one dict lookup
        # for every other message).
        target = message.headers.get(REPLAY_CONSUMER)
        if target is not None and message.delivery is not None and target != message.delivery.consumer:
            return self._not_ours(message, target)
        watch = self._watch
        run = watch.start(message) if watch is not None else None
        verdict: Verdict | None = None
        try:
            limit = self._limit
            if limit is not None and message.attempt > limit:
                verdict = self._past_limit(message, limit)
            elif self._timeout is None:
                try:
                    result = await self._handler(message)
                except BaseException as error:  # CancelledError too: a failed attempt unless this task's
                    verdict = verdict_for(message, self._settings, error)
                    if verdict is None:
                        raise  # this task is being cancelled, or the process stopped
                else:
                    verdict = ACKED if result is None else Verdict(Action.ACK, result=result)
            else:
                verdict = await run_handler(self._handler, message, self._settings)
            if verdict is not ACKED:
                verdict = await self._decide(message, verdict)
            return verdict
        finally:
            self._settled()
            if watch is not None and run is not None:
                watch.finish(run, message, verdict, self._store_dead_letter is not None)

    async def _decide(self, message: Message, verdict: Verdict) -> Verdict:
        """Anything but a plain ack: answer a request, store a dead letter."""
        replier = self._replier
        if (verdict.result is not None or verdict.action is Action.TERM) and replier is not None:
            address = message.headers.get(REPLY_TO)
            if address is not None:
                try:
                    allowed = await replier.allows(message, address)
                except Exception as error:  # could not ask whether a stream captures it: as a reply not sent
                    if verdict.action is Action.ACK:
                        return self._not_sent(message, error)
                    self.counters["reply_failed"] += 1  # terminated all the same, without its error reply
                else:
                    if allowed:
                        return await self._answer(message, verdict, address, replier)
                    self.counters["reply_refused"] += 1  # forged or foreign: handled as a plain message
        if verdict.action is Action.TERM and self._store_dead_letter is not None:
            verdict = await self._dead_letter(message, verdict, self._store_dead_letter)
        return verdict

    def _not_sent(self, message: Message, error: Exception) -> Verdict:
        """A reply that could not be sent: the request is not acked either, so it comes back."""
        self.counters["reply_failed"] += 1
        what = "could not send the reply to %s; redelivering it: %r"
        logger.warning(what, message.subject, error, extra=message_extra(message))
        return Verdict(Action.NAK, self._settings.backoff.delay(message.attempt, random.random()), error)

    async def _answer(self, message: Message, verdict: Verdict, address: str, replier: Replier) -> Verdict:
        """Reply to a request, then settle it: the reply before the ack, an error reply after the dead letter."""
        if verdict.action is Action.ACK:
            reply = replier.encode(message, verdict.result)
            if not isinstance(reply, Exception):
                try:
                    await replier.send(address, reply)
                except Exception as error:  # not sent: not acked either, so redelivered
                    return self._not_sent(message, error)
                return verdict
            what = "the reply to %s cannot be sent, dead-lettering it: %s"
            logger.error(what, message.subject, reply, extra=message_extra(message))
            verdict = Verdict(Action.TERM, error=reply)  # bad output: as poison, never retried
        if self._store_dead_letter is not None:
            verdict = await self._dead_letter(message, verdict, self._store_dead_letter)
        if verdict.action is Action.TERM:
            await replier.fail(message, verdict.error, address)
        return verdict

    def _not_ours(self, message: Message, target: str) -> Verdict:
        """A dead letter's replay meant for consumer ``target``: acked without running the handler."""
        self.counters["replay_skipped"] += 1
        logger.debug("a replay on %s is for consumer %s: acked unhandled", message.subject, target)
        self._settled()
        return ACKED

    def _past_limit(self, message: Message, limit: int) -> Verdict:
        self.counters["delivered_past_limit"] += 1
        return Verdict(Action.TERM, error=DeliveryLimitError(message.attempt, limit))

    async def _dead_letter(self, message: Message, verdict: Verdict, store: StoreDeadLetter) -> Verdict:
        failures = 0
        while (outcome := await store(message, verdict)) != "stored":
            if outcome == "lost":
                self.counters["dead_letters_lost"] += 1
                return verdict  # terminated without a letter: logged and counted, never held for good
            failures += 1
            self.counters["dead_letter_failed"] += 1
            delivery = message.delivery
            where = f"{delivery.stream}#{delivery.sequence}" if delivery else "?"
            self.last_error = f"could not dead-letter {where} ({message.subject}): held, retrying"
            if self.stopping.is_set():
                return Verdict(Action.NAK, error=verdict.error)  # comes back, then is dead-lettered
            delay = self._settings.backoff.delay(failures, random.random())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
        return verdict
