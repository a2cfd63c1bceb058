"""The operator's side of the broker's front: consumer state, pause and resume, the dead letters, and the
Key-Value primitives the Key-Value inbox stands on.

:class:`Operations` is a base of :class:`~jetstream_fastapi.core.broker.BaseBroker`, kept apart so that the
publish and consume paths read on their own. Each method checks its arguments, then calls the backend
through the front's ``_below`` (failures below become the library's errors).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import datetime

from ..backends.base import ConsumerState
from ..driver import Message, PubAck
from ..errors import InvalidArgumentError, JetStreamError
from .dead_letter_ops import check_seq, fetch, letter_filter, purge, replay_target, scan
from .deadletters import DEAD_LETTER_STREAM, DeadLetter, dead_letter_headers, dead_letter_subject
from .front import Front
from .pausing import consumer_of, pause_until
from .publish_options import check_server_version
from .subjects import check_subject

logger = logging.getLogger("jetstream_fastapi")

_BUCKET = re.compile(r"[a-zA-Z0-9_-]+")  # nats-py's and the server's rules for names and keys
_KEY = re.compile(r"[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*")


class Operations(Front):
    """Consumer state, pause/resume and dead-letter admin."""

    async def consumer_states(self) -> list[ConsumerState]:
        """The state on the server of every running subscription's consumer (one request each): lag, ack
        pending, redelivered, last activity. Consumers deleted meanwhile are left out."""
        self._require()
        states: list[ConsumerState] = []
        seen: set[tuple[str, str]] = set()
        try:
            for sub in list(self._subscriptions):
                key = (sub.stream, sub.consumer_name)
                if key in seen:
                    continue
                seen.add(key)
                state = await self._backend.consumer_state(*key)
                if state is not None:
                    states.append(state)
        except JetStreamError:
            raise
        except Exception as error:
            raise self._translate(error) from error
        return states

    async def pause(self, queue: str, *, until: datetime, stream: str | None = None) -> None:
        """Pause the durable consumer ``queue`` on the server until ``until`` (an aware ``datetime``): no
        instance receives its messages meanwhile (see :mod:`~jetstream_fastapi.core.pausing`). ``stream``
        defaults to the stream of this broker's subscription with that queue."""
        when = pause_until(until)
        target = consumer_of(queue, stream, self._subscriptions)
        self._require()
        check_server_version(["consumer pause"], self._backend.server_version)
        await self._below(self._backend.pause(*target, when))
        logger.info("paused consumer %s on stream %s until %s", queue, target[0], when.isoformat())

    async def resume(self, queue: str, *, stream: str | None = None) -> None:
        """End a pause of the durable consumer ``queue`` now (nothing happens if it is not paused)."""
        target = consumer_of(queue, stream, self._subscriptions)
        self._require()
        check_server_version(["consumer pause"], self._backend.server_version)
        await self._below(self._backend.pause(*target, None))
        logger.info("resumed consumer %s on stream %s", queue, target[0])

    async def list_dead_letters(
        self, limit: int = 100, *, stream: str | None = None, consumer: str | None = None
    ) -> list[DeadLetter]:
        """The oldest ``limit`` messages in the dead-letter stream, with why they died; only those from the
        original ``stream`` and terminated by ``consumer`` when given."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise InvalidArgumentError(f"limit must be a non-negative integer, got {limit!r}")
        subject = letter_filter(stream, consumer)
        self._require()
        return await self._below(scan(self._backend, limit, subject))

    async def dead_letter(self, seq: int) -> DeadLetter:
        """Dead letter ``seq``; :class:`DeadLetterNotFoundError` if there is none."""
        check_seq(seq)
        self._require()
        return await self._below(fetch(self._backend, seq))

    async def replay_dead_letter(self, seq: int) -> PubAck:
        """Publish dead letter ``seq`` again to its original subject, for the consumer that dead-lettered it
        only, then delete it from the dead-letter stream.

        The replay carries the original body and headers (the TTL restored; no ``Nats-*`` instruction), a
        msg id of its own, and :data:`~jetstream_fastapi.core.deadletters.REPLAY_CONSUMER` naming the consumer:
        this library's other consumers of the subject ack it without running their handler. It is stored
        only into the letter's own stream (never a provisioned one), and only if the letter is well formed
        and whole, its subject captured by that stream and its consumer still there:
        :class:`DeadLetterReplayError` otherwise, :class:`NoStreamError` if the stream is gone (nothing is
        published then), :class:`DeadLetterNotFoundError` if there is no such letter. If the server answers
        ``duplicate`` (this replay was stored before), the letter is kept and the PubAck says ``duplicate``.
        """
        letter = await self.dead_letter(seq)
        stream = await self._below(replay_target(self._backend, letter))
        replay = letter.replay()
        ack = await self.publish(
            letter.subject, replay, msg_id=replay.msg_id, ttl=letter.replay_ttl, expected_stream=stream
        )
        if ack.duplicate:
            logger.warning("dead letter %d was replayed before (duplicate): kept, nothing stored", seq)
            return ack
        await self._below(self._backend.delete(DEAD_LETTER_STREAM, seq))
        return ack

    async def purge_dead_letters(
        self, seqs: Iterable[int] | None = None, *, stream: str | None = None, consumer: str | None = None
    ) -> int:
        """Delete dead letters for good: those numbered ``seqs`` (all checked first; if one is missing,
        :class:`DeadLetterNotFoundError` and nothing is deleted), or every one (from the original ``stream``,
        terminated by ``consumer``, when given). Returns how many were deleted."""
        if seqs is not None and (stream is not None or consumer is not None):
            raise InvalidArgumentError("give either seqs or the stream/consumer filter, not both")
        subject = letter_filter(stream, consumer)
        wanted = None if seqs is None else [check_seq(seq) for seq in seqs]
        self._require()
        return await self._below(purge(self._backend, wanted, subject))

    async def publish_dead_letter(
        self, message: Message, error: BaseException, *, source: str, consumer: str, msg_id: str
    ) -> PubAck:
        """Store ``message`` (its ``subject``, body and headers) as a dead letter of ``source`` and
        ``consumer`` with why it died, for producers of the library's own (the outbox relay) whose messages
        never reached a stream: it is listed by ``list_dead_letters(stream=source, consumer=consumer)`` and
        replayed to its subject like any other. ``msg_id`` stores a retried dead-lettering once."""
        letter_filter(source, consumer)  # the same name rules as the filter that lists them
        self._require()
        await self._below(self._backend.ensure_dead_letter_stream())
        letter = Message(body=message.body, headers=dead_letter_headers(message, error))
        return await self.publish(dead_letter_subject(source, consumer), letter, msg_id=msg_id)

    async def duplicate_window(self, subject: str) -> float:
        """Seconds the stream capturing ``subject`` remembers a ``msg_id`` (counted from its first sighting):
        a publish retried with the same id later than that is stored twice."""
        check_subject(subject, wildcards=False)
        self._require()
        stream = await self._below(self._backend.stream_for(subject))
        return (await self._below(self._backend.stream_facts(stream))).duplicate_window

    # -- Key-Value ---------------------------------------------------------------------------------

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        """The value of ``key`` in the Key-Value ``bucket`` (created if missing: a ``KV_<bucket>`` stream on
        a server); ``None`` if it has none (never written, or expired)."""
        _check_kv(bucket, key)
        self._require()
        return await self._below(self._backend.kv_get(bucket, key))

    async def kv_create(self, bucket: str, key: str, value: bytes = b"", *, ttl: float) -> bool:
        """Write ``key`` in ``bucket`` only if it has no value (the first writer wins), to expire after
        ``ttl`` seconds (at least 1: a per-message TTL, nats-server 2.11 or later). Whether this call
        wrote it; ``False`` if another writer was first."""
        _check_kv(bucket, key)
        if not isinstance(ttl, int | float) or isinstance(ttl, bool) or ttl < 1:
            raise InvalidArgumentError(f"ttl must be at least 1 second, got {ttl!r}")
        self._require()
        return await self._below(self._backend.kv_create(bucket, key, bytes(value), float(ttl)))


def _check_kv(bucket: str, key: str) -> None:
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
        raise InvalidArgumentError(f"bucket must be letters, digits, '-' and '_', got {bucket!r}")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidArgumentError(f"key must be letters, digits, '-/_=' and inner dots, got {key!r}")
