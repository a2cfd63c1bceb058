"""The idempotent inboxes: a message's record keeps its redeliveries from running the handler again.

* :class:`Inbox` (SQL, exactly-once effects): the handler's database work and the record of its message
  commit together::

    inbox = Inbox(async_sessionmaker(engine))

    @router.handle("orders.created", queue="billing")
    async def bill(order: Order, session: AsyncSession = Depends(inbox.session)) -> None:
        session.add(Invoice(order_id=order.id))                  # the effect
        await outbox.publish(session, "invoices.created", ...)   # and what it publishes

  The library records the message (its consumer and its msg id, or stream and sequence) in the inbox
  table in the handler's transaction, commits, then acks; a redelivery of a message whose transaction
  committed is acked without running the handler (:class:`~jetstream_fastapi.Ack`). Needs the ``sql``
  extra.
* :class:`KeyValueInbox` (a Key-Value bucket, for handlers without a database): at-least-once with
  deduplication of completed work (see :mod:`~jetstream_fastapi.inbox.keyvalue`). No extra needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .identity import message_identity
from .keyvalue import KeyValueInbox

if TYPE_CHECKING:
    from .sql import Inbox, inbox_table

__all__ = ["Inbox", "KeyValueInbox", "inbox_table", "message_identity"]


def __getattr__(name: str) -> Any:
    # The SQL inbox is imported on first use, so that the Key-Value inbox needs no SQLAlchemy.
    if name not in ("Inbox", "inbox_table"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import sql
    except ImportError as error:  # pragma: no cover - the base install; see tests/test_outbox.py
        raise ImportError(
            "jetstream_fastapi.inbox.Inbox needs SQLAlchemy: pip install 'jetstream-fastapi[sql]'"
        ) from error
    return getattr(sql, name)
