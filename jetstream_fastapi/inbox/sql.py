"""The SQL inbox: :class:`Inbox` and its table (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Column, Float, MetaData, PrimaryKeyConstraint, String, Table, delete, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..driver import Ack, Message
from ..errors import InvalidArgumentError
from .identity import message_identity

logger = logging.getLogger("jetstream_fastapi")

DEFAULT_RETENTION = 7 * 24 * 3600.0
"""Seven days, as NServiceBus keeps its deduplication data."""


def inbox_table(metadata: MetaData | None = None, name: str = "jetstream_inbox") -> Table:
    """The inbox table ``name`` on ``metadata``: one row per (consumer, message) handled."""
    return Table(
        name,
        metadata if metadata is not None else MetaData(),
        Column("consumer", String(255), nullable=False),
        Column("message", String(255), nullable=False),
        Column("handled_at", Float, nullable=False, index=True),
        PrimaryKeyConstraint("consumer", "message"),
    )


class Inbox:
    """Exactly-once handling of a consumer's messages in the app's database (see the package docstring).

    ``sessions`` makes the handlers' sessions (the app's ``async_sessionmaker``). ``retention`` (seconds,
    default 7 days) is how long a handled message is remembered: a redelivery later than that runs the
    handler again. Keep it longer than the stream's redelivery horizon (``max_deliver`` times (``ack_wait`` +
    the backoff)) and than any republish of the same msg id (the outbox's retry horizon). Handled with the
    lifespan (``start``/``stop``), rows older than that are pruned every ``prune_interval`` seconds.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        name: str = "jetstream_inbox",
        metadata: MetaData | None = None,
        retention: float = DEFAULT_RETENTION,
        prune_interval: float = 3600.0,
    ) -> None:
        for option, seconds in (("retention", retention), ("prune_interval", prune_interval)):
            if not isinstance(seconds, int | float) or seconds <= 0:
                raise InvalidArgumentError(f"{option} must be a positive number of seconds, got {seconds!r}")
        self.sessions = sessions
        self.table = inbox_table(metadata, name)
        self.retention = float(retention)
        self.prune_interval = float(prune_interval)
        self._pruning: asyncio.Task[None] | None = None

    async def session(self, message: Message) -> AsyncIterator[AsyncSession]:
        """The handler dependency (``Depends(inbox.session)``): a session in a transaction that already
        holds this message's inbox row; it commits after the handler returned, before the ack, and rolls
        back if the handler raised. A message handled before is acked without running the handler."""
        consumer, identity = message_identity(message)
        async with self.sessions() as session, session.begin():
            if not await self._record(session, consumer, identity):
                raise Ack(f"{identity} was handled before by {consumer}")
            yield session

    async def _record(self, session: AsyncSession, consumer: str, identity: str) -> bool:
        """Insert the inbox row; False if it is there already (committed by an earlier delivery). On
        PostgreSQL the insert waits for a concurrent delivery's open transaction, then sees its outcome."""
        values: dict[str, Any] = {"consumer": consumer, "message": identity, "handled_at": time.time()}
        dialect = session.get_bind().dialect.name
        if dialect in ("postgresql", "sqlite"):
            module: Any = postgresql if dialect == "postgresql" else sqlite
            statement = module.insert(self.table).values(values).on_conflict_do_nothing()
            result: Any = await session.execute(statement)
            return bool(result.rowcount == 1)
        try:
            async with session.begin_nested():
                await session.execute(insert(self.table).values(values))
        except IntegrityError:
            return False
        return True

    async def create_tables(self) -> None:
        """Create the inbox table if it does not exist (apps with migrations include ``self.table``)."""
        async with self.sessions() as session, session.begin():
            connection = await session.connection()
            await connection.run_sync(self.table.create, checkfirst=True)

    async def prune(self, now: float | None = None) -> int:
        """Delete the rows older than ``retention``; how many."""
        horizon = (time.time() if now is None else now) - self.retention
        async with self.sessions() as session, session.begin():
            result: Any = await session.execute(delete(self.table).where(self.table.c.handled_at < horizon))
            return int(result.rowcount or 0)

    async def start(self, broker: object = None) -> None:
        """Start pruning every ``prune_interval`` seconds (``jetstream_lifespan(..., inbox=...)``)."""
        if self._pruning is None:
            self._pruning = asyncio.create_task(self._prune_forever(), name=f"inbox pruning {self.table.name}")

    async def stop(self) -> None:
        """Stop pruning."""
        task, self._pruning = self._pruning, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _prune_forever(self) -> None:
        while True:
            try:
                pruned = await self.prune()
            except Exception as error:  # the database is down: the next round prunes
                logger.warning("inbox %s: pruning failed: %s", self.table.name, error)
            else:
                if pruned:
                    logger.info("inbox %s: pruned %d rows older than %gs", self.table.name, pruned, self.retention)
            await asyncio.sleep(self.prune_interval)
