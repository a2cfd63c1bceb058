"""Terminating a message without losing it: dead-letter first, and hold the message while that fails.

A nak would not help on the last attempt (the server does not redeliver past ``max_deliver``), so a
message whose dead letter is refused is *held*: the worker keeps it in progress and the dead letter is
retried with the consumer's backoff. A worker that stops meanwhile gives it back (nak). While
dead-lettering, the server's ``max_deliver`` is unlimited and the limit is enforced here: a delivery past
it is dead-lettered without running the handler again (its last failure could not be recorded, or its
handler never returned, crashing its process each time).

Pure asyncio; the dead-letter publish itself is the broker's hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable

from .acks import NAK, DeliveryLimitError
from .consuming import Action, ConsumerSettings, Verdict
from .driver import Message

TerminateHook = Callable[[Message, Verdict], Awaitable[bool]]
"""Stores a message's dead letter before it is terminated; returning False means "not stored, keep it"."""


class Terminator:
    """The ``+TERM`` (or the give-back) of one worker's messages."""

    def __init__(
        self,
        hook: TerminateHook | None,
        settings: ConsumerSettings,
        counters: Counter[str],
        stopping: asyncio.Event,
        report: Callable[[str], None],
    ) -> None:
        self._hook = hook
        self._settings = settings
        self._counters = counters
        self._stopping = stopping
        self._report = report  # the worker's last_error, for health probes

    def past_limit(self, message: Message) -> Verdict | None:
        """A terminate verdict for a delivery past ``max_deliver`` (only while dead-lettering), else None."""
        limit = self._settings.max_deliver
        if self._hook is None or limit == -1 or message.attempt <= limit:
            return None
        self._counters["delivered_past_limit"] += 1
        error = DeliveryLimitError(f"delivered {message.attempt} times, max_deliver is {limit}")
        return Verdict(Action.TERM, error=error)

    async def payload(self, message: Message, verdict: Verdict, where: str) -> bytes:
        """``+TERM <reason>`` once the dead letter is stored; ``-NAK`` if the worker stops first."""
        hook = self._hook
        failures = 0
        while hook is not None and not await hook(message, verdict):
            failures += 1
            self._counters["dead_letter_failed"] += 1
            self._report(f"could not dead-letter {where} ({message.subject}): held, retrying")
            if self._stopping.is_set():
                return NAK  # redelivered (max_deliver is unlimited on the server), then dead-lettered
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._settings.backoff.delay(failures, random.random()))
        return b"+TERM " + verdict.reason.encode()[:1024]
