"""The operator's side of the broker's front: consumer state, pause and resume, a stream's duplicate window,
and the Key-Value primitives the Key-Value inbox stands on.

:class:`Operations` is a base of :class:`~jetstream_fastapi.core.broker.BaseBroker`, kept apart so that the
publish and consume paths read on their own. Each method checks its arguments, then calls the backend
through the front's ``_below`` (failures below become the library's errors).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime

from ..backends.base import ConsumerState
from ..errors import InvalidArgumentError, JetStreamError
from .front import Front
from .pausing import consumer_of, pause_until
from .publish_options import check_server_version
from .subjects import check_subject

logger = logging.getLogger("jetstream_fastapi")

_BUCKET = re.compile(r"[a-zA-Z0-9_-]+")  # nats-py's and the server's rules for names and keys
_KEY = re.compile(r"[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*")


class Operations(Front):
    """Consumer state, pause/resume and the duplicate window (the dead letters are
    :class:`~jetstream_fastapi.core.dead_letters.DeadLetters`)."""

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
