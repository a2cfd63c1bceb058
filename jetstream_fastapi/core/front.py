"""What every part of the broker's front shares: the backend, the settings, the subscriptions, and the
mapping of failures below into the library's errors.

:class:`Front` is the base of :class:`~jetstream_fastapi.core.consuming.Consuming`,
:class:`~jetstream_fastapi.core.operations.Operations`, :class:`~jetstream_fastapi.core.scheduling.Scheduling`
and so of :class:`~jetstream_fastapi.core.broker.BaseBroker`, which adds the lifecycle and publishing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from ..driver import MSG_ID_HEADER, PubAck
from ..errors import JetStreamError, NotConnectedError, PublishConflictError
from ..observability.hooks import observer
from .preparing import Preparer, deadline
from .subjects import max_subject_length

if TYPE_CHECKING:
    from ..backends.base import Backend, Outgoing
    from ..driver import Payload
    from .options import FrontSettings
    from .subscription import Subscription

T = TypeVar("T")
NOT_CONNECTED = "the broker is not connected: call `await broker.connect()` first"
"""The text of the :class:`NotConnectedError` of a call before ``connect()`` or after ``disconnect()``."""


class Front:
    """The state and the error mapping of the broker's front (see the module docstring)."""

    def __init__(self, backend: Backend, settings: FrontSettings) -> None:
        self._backend = backend
        self._settings = settings
        self.defaults = settings.consumer
        """The consumer settings every ``subscribe`` starts from (the broker's consumer options)."""
        self._opened = False
        self._subscriptions: set[Subscription] = set()
        self._settled = asyncio.Event()  # set as each message is settled (wait_until_idle listens)
        # Spans and metrics (None: nothing to record, the plain path); see jetstream_fastapi.observability.
        self._observer = observer(settings.tracing, settings.metrics)
        self._preparer = Preparer(max_subject_length(backend.max_control_line, backend.inbox_prefix))

    @property
    def shutdown_timeout(self) -> float:
        """Seconds running handlers get to finish on ``unsubscribe``/``disconnect``."""
        return self._settings.shutdown_timeout

    async def publish(
        self,
        subject: str,
        message: Payload,
        *,
        msg_id: str | None = None,
        ttl: float | None = None,
        expected_stream: str | None = None,
    ) -> PubAck:
        """Store ``message`` on ``subject`` (the broker's :meth:`~jetstream_fastapi.core.broker.BaseBroker.publish`)."""
        raise NotImplementedError

    def _require(self) -> None:
        if not self._opened:
            raise NotConnectedError(NOT_CONNECTED)

    def _translate(self, error: Exception) -> JetStreamError:
        """The library's error for ``error`` (raised from below); the caller raises it ``from error``."""
        mapped = self._backend.translate(error)
        if mapped is not None:
            return mapped
        return JetStreamError(
            f"unexpected failure in the {self._backend.name} backend: {self._backend.describe(error)}"
        )

    async def _below(self, call: Awaitable[T]) -> T:
        """Await a call into the backend, turning a failure below into the library's error."""
        try:
            return await call
        except JetStreamError:
            raise
        except Exception as error:
            raise self._translate(error) from error

    def _deadline(self, timeout: float | None) -> float:
        return deadline(timeout, self._settings.publish_timeout)

    def _prepare(self, subject: str, message: Payload, msg_id: str | None, headers: dict[str, str] | None) -> Outgoing:
        """Check and encode one message, giving it a msg id; raises before anything is sent."""
        return self._preparer.prepare(subject, message, msg_id, headers, self._backend.max_payload)

    async def _store(self, outgoing: Outgoing, total: float) -> PubAck:
        try:
            return await self._backend.store(outgoing, total)
        except PublishConflictError as conflict:
            ack = await self._stored_before(conflict, outgoing)
            if ack is None:
                raise
            return ack
        except JetStreamError:
            raise
        except Exception as error:
            raise self._translate(error) from error

    async def _stored_before(self, conflict: PublishConflictError, outgoing: Outgoing) -> PubAck | None:
        """The PubAck of ``outgoing`` if the ``conflict`` is with ``outgoing`` itself, stored by an earlier
        attempt (a retry after a lost PubAck): the server checks expectations before its duplicate window,
        so the retry is refused with the sequence the first attempt got. ``None``: another writer's message."""
        if conflict.stream is None or not conflict.current_sequence:
            return None
        stored = None
        with contextlib.suppress(Exception):  # the conflict stands if the message cannot be read
            stored = await self._backend.read(conflict.stream, conflict.current_sequence)
        if stored is None or stored.headers.get(MSG_ID_HEADER) != outgoing.headers.get(MSG_ID_HEADER):
            return None
        return PubAck(stream=conflict.stream, seq=conflict.current_sequence, duplicate=True)
