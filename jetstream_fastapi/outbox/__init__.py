"""The transactional outbox: messages published in the app's own database transaction, relayed to JetStream.

::

    outbox = Outbox(engine)                       # an AsyncEngine (SQLite or PostgreSQL)
    app = FastAPI(lifespan=jetstream_lifespan(broker, router, outbox=outbox))

    @app.post("/orders")
    async def create(order: Order, session: AsyncSession = Depends(get_session)) -> None:
        async with session.begin():
            session.add(OrderRow(...))
            await outbox.publish(session, "orders.created", order, key=order.id)

The message is a row of the outbox table, committed or rolled back with the order; the relay started by
``jetstream_lifespan`` publishes committed rows (PubAck awaited, a msg id stored in the row) and deletes
them. See :class:`Outbox` and the docs page for the guarantees.

Needs the ``sql`` extra (SQLAlchemy's asyncio API; ``postgres`` for asyncpg): the rest of the library never
imports this package, so the base install stays free of SQLAlchemy.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess by tests/test_outbox.py
    raise ImportError(
        "jetstream_fastapi.outbox needs SQLAlchemy: pip install 'jetstream-fastapi[sql]' "
        "(or '[postgres]' for PostgreSQL)"
    ) from error

from .outbox import Outbox, OutboxStats, StuckRow
from .tables import outbox_tables

__all__ = ["Outbox", "OutboxStats", "StuckRow", "outbox_tables"]
