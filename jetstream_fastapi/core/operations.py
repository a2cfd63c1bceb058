"""The operator's side of the broker's front: consumer state, pause and resume, a stream's duplicate window.

:class:`Operations` is a base of :class:`~jetstream_fastapi.core.broker.BaseBroker`, kept apart so that the
publish and consume paths read on their own. Each method checks its arguments, then calls the backend
through the front's ``_below`` (failures below become the library's errors).
"""

from __future__ import annotations

import logging
from datetime import datetime

from ..backends.base import ConsumerState
from ..errors import JetStreamError
from .front import Front
from .pausing import consumer_of, pause_until
from .publish_options import check_server_version
from .subjects import check_subject

logger = logging.getLogger("jetstream_fastapi")


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
