"""The Key-Value inbox, for handlers without a database: a completed message is remembered in a Key-Value
bucket, and its redeliveries are acked without running the handler.

::

    inbox = KeyValueInbox()                    # bucket "jetstream_inbox", keys kept 7 days

    @router.handle("orders.created", queue="mailer")
    async def send_mail(order: Order, _: None = Depends(inbox.guard)) -> None:
        await mailer.send(...)

This is **at-least-once with deduplication of completed work**, not exactly-once: the key is written
(``create``: the first writer wins, with a TTL) *after* the handler returned, in a separate write. A crash,
or NATS unreachable, between the handler's effect and that write runs the handler again on the
redelivery. What it does suppress: redeliveries (and republishes of the same msg id) of messages whose
handler completed and was recorded, for ``retention`` seconds. For exactly-once effects on a database,
use :class:`~jetstream_fastapi.inbox.Inbox`, whose record commits with the effect.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator

from ..core.broker import BaseBroker
from ..driver import Ack, Message
from ..errors import InvalidArgumentError, JetStreamError
from .identity import message_identity

logger = logging.getLogger("jetstream_fastapi")

DEFAULT_RETENTION = 7 * 24 * 3600.0
"""Seven days, as the SQL inbox."""
_BUCKET = re.compile(r"[-_a-zA-Z0-9]+")
_PLAIN = re.compile(r"[-_=a-zA-Z0-9]+")  # a key token without escaping


class KeyValueInbox:
    """Redeliveries of completed messages acked without running the handler (see the module docstring).

    ``bucket`` is the Key-Value bucket (created if missing); ``retention`` (seconds, default 7 days, at
    least 1) how long a completed message is remembered: keep it longer than the stream's redelivery
    horizon (``max_deliver`` times (``ack_wait`` + the backoff)) and than any republish of the same msg id.
    """

    def __init__(self, bucket: str = "jetstream_inbox", *, retention: float = DEFAULT_RETENTION) -> None:
        if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
            raise InvalidArgumentError(f"bucket must be letters, digits, '-' and '_', got {bucket!r}")
        if not isinstance(retention, int | float) or isinstance(retention, bool) or retention < 1:
            raise InvalidArgumentError(f"retention must be at least 1 second, got {retention!r}")
        self.bucket = bucket
        self.retention = float(retention)

    async def guard(self, message: Message, broker: BaseBroker) -> AsyncIterator[None]:
        """The handler dependency (``Depends(inbox.guard)``): acks a message completed before without
        running the handler; records the message once the handler returned (not when it raised)."""
        consumer, identity = message_identity(message)
        key = self.key(consumer, identity)
        if await broker.kv_get(self.bucket, key) is not None:
            raise Ack(f"{identity} was handled before by {consumer}")
        yield
        try:
            await broker.kv_create(self.bucket, key, identity.encode(), ttl=self.retention)
        except JetStreamError as error:
            # The work is done: acking beats running it again. Only a redelivery would repeat it.
            logger.warning(
                "inbox %s: %s of %s handled, but not recorded (a redelivery would run it again): %s",
                self.bucket,
                identity,
                consumer,
                error,
            )

    @staticmethod
    def key(consumer: str, identity: str) -> str:
        """The key of a message: ``<consumer>.<sha-256 of its identity>`` (a consumer name outside the
        key alphabet is hashed too)."""
        digest = hashlib.sha256(identity.encode()).hexdigest()
        if not _PLAIN.fullmatch(consumer):
            consumer = hashlib.sha256(consumer.encode()).hexdigest()[:32]
        return f"{consumer}.{digest}"

    def __repr__(self) -> str:
        return f"KeyValueInbox(bucket={self.bucket!r}, retention={self.retention:g})"
