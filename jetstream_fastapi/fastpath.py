"""Two shortcuts through nats-py internals for the pull worker's hot path, on tested nats-py versions only.

Through nats-py's public API every consumed message costs a hop and a few microseconds more than needed:

* **delivery**: ``subscribe(cb=...)`` puts each message on an ``asyncio.Queue`` that a task of its own
  drains into the callback, one event-loop turn later. :func:`subscribe_direct` subscribes without a
  callback and puts a :class:`DirectQueue` in place of that queue, so nats-py's reader hands each message
  to the worker as it parses it;
* **publishing**: ``publish()`` checks state, sizes and headers, and updates statistics, for a ``+ACK``
  whose subject came from the server, or a message this package has checked already.
  :func:`publisher` writes the ``PUB``/``HPUB`` command itself.

Measured with the benchmark (``bench/``): a no-op handler at batch 100 went from ~80k to ~86k msg/s
(11 → 9 µs of CPU per message); 10 ms handlers at concurrency 256 from ~19.2k to ~20.4k msg/s.

Both rely on private names (``Subscription._pending_queue``/``_pending_size``, ``Client._send_command``,
``_flush_queue``, ``_flush_pending``), so :data:`ENABLED` is true only for the nats-py versions in
:data:`TESTED` that have them; anywhere else, or with the environment variable
``JETSTREAM_FASTAPI_PUBLIC_API=1``, the worker uses ``subscribe(cb=...)`` and ``publish()``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, OutboundBufferLimitError

from .publishing import encode_headers

logger = logging.getLogger("jetstream_fastapi")

TESTED = ("2.16",)
"""``major.minor`` versions of nats-py whose internals the shortcuts were checked against."""

Publish = Callable[[str, bytes, str, "dict[str, str] | None"], Awaitable[None]]
"""``publish(subject, payload, reply, headers)``."""


def _supported() -> bool:
    if os.environ.get("JETSTREAM_FASTAPI_PUBLIC_API", "") not in ("", "0"):
        return False
    try:
        version = importlib.metadata.version("nats-py")
    except importlib.metadata.PackageNotFoundError:
        return False
    if ".".join(version.split(".")[:2]) not in TESTED:
        return False
    return all(hasattr(NATS, name) for name in ("_send_command", "_flush_pending", "_process_msg"))


ENABLED = _supported()
"""Whether the worker takes the shortcuts (see the module docstring)."""


class DirectQueue:
    """Stands in for a subscription's ``asyncio.Queue``: each message nats-py puts goes to ``deliver`` at once.

    ``deliver`` runs inside nats-py's reader, so it must be quick and must not raise: an exception there
    would be taken for a protocol error and reset the connection. One that slips through is logged, and the
    message, never acked, is redelivered by the server after its ack wait.
    """

    __slots__ = ("_deliver", "_sub")

    def __init__(self, sub: Subscription, deliver: Callable[[Msg], None]) -> None:
        self._sub = sub
        self._deliver = deliver

    def put_nowait(self, msg: Msg) -> None:
        """Called by nats-py for every message of the subscription."""
        self._sub._pending_size -= len(msg.data)  # nats-py added it; nothing stays queued here
        try:
            self._deliver(msg)
        except Exception:
            logger.exception("delivering a message on %s failed; the server will redeliver it", msg.subject)

    # What nats-py's drain() and the pending counters call on the queue: nothing is ever held.
    async def join(self) -> None:
        """Nothing is queued: returns at once."""

    def qsize(self) -> int:
        """Always 0."""
        return 0

    def empty(self) -> bool:
        """Always True."""
        return True

    def task_done(self) -> None:
        """Nothing to count."""


async def subscribe_direct(nc: NATS, subject: str, deliver: Callable[[Msg], None]) -> Subscription:
    """Subscribe ``subject`` with each message handed to ``deliver`` inside nats-py's reader."""
    sub = await nc.subscribe(subject)  # no callback: nats-py starts no task of its own for it
    sub._pending_queue = DirectQueue(sub, deliver)  # type: ignore[assignment]
    return sub


def publisher(nc: NATS) -> Publish:
    """``publish(subject, payload, reply, headers)`` for subjects and headers this package has checked (or
    that came from the server), within the connection's payload limit."""
    if not ENABLED:

        async def public(subject: str, payload: bytes, reply: str, headers: dict[str, str] | None = None) -> None:
            await nc.publish(subject, payload, reply=reply, headers=headers)

        return public

    async def direct(subject: str, payload: bytes, reply: str, headers: dict[str, str] | None = None) -> None:
        if nc.is_closed:
            raise ConnectionClosedError
        if headers:
            block = encode_headers(headers)
            command = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
                subject.encode(),
                reply.encode(),
                len(block),
                len(block) + len(payload),
                block,
                payload,
            )
        else:
            command = b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(payload), payload)
        if not nc.is_connected and len(command) + nc._pending_data_size > nc._max_pending_size:
            # As publish() does while reconnecting: the buffer that is sent after the reconnect is bounded.
            raise OutboundBufferLimitError
        await nc._send_command(command)
        # As publish() does: wake nats-py's flusher when nothing is queued for it yet.
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    return direct
