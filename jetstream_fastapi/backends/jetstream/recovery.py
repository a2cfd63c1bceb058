"""How a pull worker gets back to full rate after a server restart, a leader election or a deleted consumer.

"No responders" (503) on the worker's inbox does not mean the consumer is gone. During a SIGTERM
nats-server stops JetStream before it closes client connections, so acks that carried a pull (``+NXT``)
get 503 replies naming their ``$JS.ACK`` subject, and pull requests get 503 while a consumer leader is
elected. So a 503, or a 409 "Consumer Deleted", only starts a *check*: the consumer's info is asked for
with a short timeout, again every fraction of a second until the server answers; only a "not found"
answer recreates the consumer. As soon as it answers, the acks that may have been lost are resent and
the worker pulls again.

Acks lost in that window get no reply at all when they carried no pull, so the subjects of the last
acks (a few times the concurrency: once JetStream stops, no new message arrives, so every ack sent in
the window is among them) are kept and sent again after a reconnect or a check, each asking for a
confirmation so that one still unanswered comes back as a 503 and is sent again. The server ignores an
ack for a message it already counts as acked.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NATS

from ...core.redaction import redact
from .acks import reply_fields

logger = logging.getLogger("jetstream_fastapi")

ACK = b"+ACK"
_CHECK_TIMEOUT = 0.5
"""Seconds to wait for the consumer's info: a dying server must not hold recovery for a connect timeout."""
_CHECK_DELAYS = (0.05, 0.1, 0.2, 0.25)
_RECREATE_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
_NOT_FOUND = 10014  # JSConsumerNotFoundErr


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space: one log line per event."""
    return " ".join(text.split())


def no_responders_subject(headers: dict[str, str]) -> str:
    """The subject a 503 status names (``Nats-Subject``); nats-py may leave it inside the description."""
    subject = headers.get("Nats-Subject")
    if subject is None:
        _, _, rest = headers.get("Description", "").partition("Nats-Subject:")
        subject = rest.split()[0] if rest.split() else ""
    return subject.strip()


class Recovery:
    """The check-and-resend state of one worker (see the module docstring)."""

    def __init__(
        self,
        nc: NATS,
        *,
        info_subject: str,
        stream: str,
        consumer: str,
        keep: int,
        ensure_consumer: Callable[[], Awaitable[object]],
        publish: Callable[[str, bytes, str, dict[str, str] | None], Awaitable[None]],
        counters: Counter[str],
    ) -> None:
        self._nc = nc
        self._info_subject = info_subject
        self._stream = stream
        self._consumer = consumer
        self._ensure_consumer = ensure_consumer
        self._publish = publish
        self._counters = counters
        self._keep = keep
        self.recent_acks: deque[str] = deque(maxlen=keep)
        """Reply subjects of the last acks sent (the worker appends to it)."""
        self.refused_acks: set[str] = set()
        """``$JS.ACK`` subjects of this consumer a 503 said were not applied (at most ``keep``)."""
        self.last_error: str | None = None

    def refused(self, subject: str) -> None:
        """A 503 on the worker's inbox said the ack to ``subject`` found nobody: resend it after the check.

        Only an ack subject of this very consumer, and at most ``keep`` of them: anyone who can publish to
        the inbox can forge a 503, and must neither make the app ack another consumer's messages nor make
        this set grow without end.
        """
        try:
            fields = reply_fields(subject)
        except ValueError:  # a number token that is not one
            fields = {}
        if fields.get("stream") != self._stream or fields.get("consumer") != self._consumer:
            self._counters["forged_status"] += 1
            return
        refused = self.refused_acks
        if len(refused) < self._keep or subject in refused:
            refused.add(subject)

    async def consumer_answers(self) -> bool | None:
        """True: the consumer's info came back; False: the server says it does not exist; None: no answer."""
        try:
            reply = await self._nc.request(self._info_subject, b"", timeout=_CHECK_TIMEOUT)
            response = json.loads(reply.data)
        except (nats.errors.Error, TimeoutError, ValueError) as error:
            # No responders (JetStream stopping or starting), a timeout, a closed connection: not an answer.
            self.last_error = f"consumer {self._consumer!r} does not answer yet: {type(error).__name__}"
            return None
        refusal = response.get("error") if isinstance(response, dict) else None
        if refusal is None:
            return True
        if refusal.get("err_code") == _NOT_FOUND:
            return False
        self.last_error = f"consumer {self._consumer!r} info refused: {one_line(str(refusal.get('description')))}"
        return None  # "JetStream not ready", "no leader" and the like: ask again shortly

    async def wait_until_answered(self, running: Callable[[], bool]) -> bool:
        """Ask until the consumer answers (recreating it if the server says it is gone); False if
        ``running()`` turned false first (stopping, or the connection dropped: a reconnect checks again)."""
        attempt = 0
        while running():
            answer = await self.consumer_answers()
            if answer is True:
                return True
            if answer is False:
                await self._recreate(running)
                return running()
            self._counters["check_retried"] += 1
            await asyncio.sleep(_CHECK_DELAYS[min(attempt, len(_CHECK_DELAYS) - 1)])
            attempt += 1
        return False

    async def _recreate(self, running: Callable[[], bool]) -> None:
        attempt = 0
        logger.warning("consumer %s is gone; recreating", self._consumer)
        while running():
            try:
                await self._ensure_consumer()
            except Exception as error:  # the library's own errors and nats-py's: retried, logged, counted
                self._counters["recreate_failed"] += 1
                self.last_error = f"recreating consumer {self._consumer!r} failed: {one_line(redact(repr(error)))}"
                logger.warning("%s", self.last_error)
                await asyncio.sleep(_RECREATE_DELAYS[min(attempt, len(_RECREATE_DELAYS) - 1)])
                attempt += 1
                continue
            self._counters["recreated"] += 1
            self.last_error = None
            logger.info("consumer %s recreated", self._consumer)
            return

    async def resend_acks(self, inbox: str) -> int:
        """Send again every ack that may have been lost; returns how many were sent.

        Each asks for a confirmation on ``inbox`` (the worker's): one that still finds nobody (a new
        consumer leader whose interest has not reached this server yet) comes back as a 503 naming it,
        and is resent after the next check, instead of being dropped without a word.
        """
        subjects = set(self.recent_acks) | self.refused_acks
        self.refused_acks.clear()
        sent = 0
        for subject in subjects:
            try:
                await self._publish(subject, ACK, inbox, None)
            except (nats.errors.Error, OSError) as error:  # the connection dropped again: a reconnect resends
                self._counters["ack_resend_failed"] += 1
                self.last_error = f"could not resend acks: {type(error).__name__}"
                self.refused_acks.update(subjects)
                return sent
            sent += 1
        self._counters["acks_resent"] += sent
        return sent
