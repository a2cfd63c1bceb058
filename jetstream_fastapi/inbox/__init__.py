"""The idempotent inbox: a handler's database work and the record of its message commit together.

::

    inbox = Inbox(async_sessionmaker(engine))

    @router.handle("orders.created", queue="billing")
    async def bill(order: Order, session: AsyncSession = Depends(inbox.session)) -> None:
        session.add(Invoice(order_id=order.id))                  # the effect
        await outbox.publish(session, "invoices.created", ...)   # and what it publishes

The library records the message (its consumer and its msg id, or stream and sequence) in the inbox table
in the handler's transaction, commits, then acks; a redelivery of a message whose transaction committed
is acked without running the handler (:class:`~jetstream_fastapi.Ack`). Needs the ``sql`` extra.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as error:  # pragma: no cover - the base install; see tests/test_outbox.py
    raise ImportError("jetstream_fastapi.inbox needs SQLAlchemy: pip install 'jetstream-fastapi[sql]'") from error

from .sql import Inbox, inbox_table, message_identity

__all__ = ["Inbox", "inbox_table", "message_identity"]
