"""The :class:`Outbox`: ``publish`` inside the app's transaction, and the relay's configuration and lifecycle."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from ..core.payloads import check_msg_id, coerce_message
from ..core.subjects import check_subject
from ..driver import MSG_ID_HEADER, Payload
from ..errors import InvalidArgumentError
from .tables import KEY_LENGTH, OutboxTables, outbox_tables

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, MetaData

    from ..core.broker import BaseBroker
    from ..integration.publishing import Publication
    from .relay import Relay

P = TypeVar("P")

logger = logging.getLogger("jetstream_fastapi")

_WAKE = "jetstream_outbox_wake"  # Session.info key: the outboxes to wake once this session commits
_NOTIFIED = "jetstream_outbox_notified"  # Connection.info key: the transaction that already sent NOTIFY


@dataclass(frozen=True)
class OutboxStats:
    """The outbox table right now (for metrics, readiness and the admin page)."""

    backlog: int
    """Rows waiting to be published (not failed)."""
    oldest_age: float
    """Seconds since the oldest waiting row was written (0 when there is none)."""
    failed: int
    """Rows that could neither be published nor dead-lettered (``failed`` column set): they wait for an
    operator."""


@dataclass(frozen=True)
class StuckRow:
    """A row of the outbox that needs a look (:meth:`Outbox.stuck`): failed, refused before, or old."""

    id: int
    msg_id: str
    subject: str
    key: str | None
    attempts: int
    """Publishes the server refused so far (a row whose chain waits for NATS keeps 0)."""
    age: float
    """Seconds since the row was written."""
    failed: str | None
    """Why the row could neither be published nor dead-lettered (it waits for :meth:`Outbox.retry`), or
    ``None`` for a row the relay still tries."""


class Outbox:
    """Messages published in the app's own database transaction, and the relay that sends them.

    ``engine`` is the app's ``AsyncEngine``; the relay uses it for its own short transactions. Options:

    ============== ======= ============================================================================
    name           default meaning
    ============== ======= ============================================================================
    name           ``jetstream_outbox``  the table (and ``<name>_lease``, and the NOTIFY channel)
    batch_size     100     rows claimed per round
    concurrency    256     publishes in flight, at most one per key (a key's rows: in commit order)
    poll_interval  1.0     seconds between reads when no wake-up comes (the fallback)
    lease_ttl      10.0    seconds a relay owns the rows it claimed (or the SQLite relay lease)
    max_attempts   5       publishes the server refuses before the row is dead-lettered
    subjects       ()      subjects whose streams' duplicate windows are checked at start
    ============== ======= ============================================================================
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        name: str = "jetstream_outbox",
        metadata: MetaData | None = None,
        batch_size: int = 100,
        concurrency: int = 256,
        poll_interval: float = 1.0,
        lease_ttl: float = 10.0,
        max_attempts: int = 5,
        subjects: Iterable[str] = (),
    ) -> None:
        for option, value in (("batch_size", batch_size), ("concurrency", concurrency), ("max_attempts", max_attempts)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"{option} must be a positive integer, got {value!r}")
        for option, seconds in (("poll_interval", poll_interval), ("lease_ttl", lease_ttl)):
            if not isinstance(seconds, int | float) or seconds <= 0:
                raise InvalidArgumentError(f"{option} must be a positive number of seconds, got {seconds!r}")
        if poll_interval * 2 > lease_ttl:
            raise InvalidArgumentError(
                f"lease_ttl ({lease_ttl:g}s) must be at least twice poll_interval ({poll_interval:g}s): "
                "a relay round, which may renew the lease, is due at least once per poll_interval"
            )
        if not name.isidentifier():
            raise InvalidArgumentError(f"name must be a plain identifier (a table name), got {name!r}")
        self.engine = engine
        self.name = name
        self.tables: OutboxTables = outbox_tables(metadata, name)
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.poll_interval = float(poll_interval)
        self.lease_ttl = float(lease_ttl)
        self.max_attempts = max_attempts
        self.subjects = tuple(check_subject(subject, wildcards=False) for subject in subjects)
        self.publications: list[Publication[Any]] = []
        """What the app declared it publishes through this outbox (:meth:`publisher`), for AsyncAPI."""
        self.dialect = engine.dialect.name
        self._relay: Relay | None = None
        self._wake = asyncio.Event()

    @property
    def retry_horizon(self) -> float:
        """The longest time, in seconds, between a publish that may have stored a row's message and the
        relay's retry of it (a relay that died after the PubAck, before the delete: its lease runs out, the
        next round takes the row): the streams' duplicate windows must be at least this long."""
        return self.lease_ttl + self.poll_interval

    def publisher(self, subject: str, payload: type[P], *, description: str | None = None) -> Publication[P]:
        """Declare that the app publishes ``payload`` on ``subject`` through this outbox: the AsyncAPI
        document (``asyncapi_router(..., outboxes=[outbox])``) lists it as a ``send`` operation marked
        ``x-jetstream-outbox``, and the relay checks the subject's duplicate window at start. Returns the
        :class:`~jetstream_fastapi.Publication` (``publication.encode(value)``, ``publication.subject``)."""
        from ..integration.publishing import Publication

        publication = Publication(subject, payload, description=description)
        self.add_publication(publication)
        return publication

    def add_publication(self, publication: Publication[Any]) -> None:
        """Declare an existing :class:`~jetstream_fastapi.Publication` as published through this outbox."""
        self.publications.append(publication)
        if publication.subject not in self.subjects:
            self.subjects += (publication.subject,)

    # -- in the app's transaction --------------------------------------------------------------------

    async def publish(
        self,
        session: AsyncSession | AsyncConnection,
        subject: str,
        message: Payload,
        *,
        key: str | None = None,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Add ``message`` for ``subject`` to the outbox in ``session``'s transaction; returns its msg id.

        Nothing is sent now: the row commits or rolls back with the rest of the transaction, and the relay
        publishes it after the commit. Messages of one ``key`` (an aggregate id) are published in commit
        order; on PostgreSQL a transaction's first ``publish`` with a key waits for other open
        transactions publishing with that key (a transaction-scoped advisory lock), which is what makes the
        row ids of one key follow commit order. ``msg_id`` (default: a fresh unique id, stored in the row)
        is the ``Nats-Msg-Id`` of every publish attempt, so a retry after a crash is stored once.
        """
        check_subject(subject, wildcards=False)
        body, merged = coerce_message(message, headers)
        merged.pop(MSG_ID_HEADER, None)
        msg_id = check_msg_id(msg_id) if msg_id is not None else f"outbox-{uuid.uuid4().hex}"
        if key is not None and (not isinstance(key, str) or not key or len(key) > KEY_LENGTH):
            raise InvalidArgumentError(f"key must be a non-empty string of at most {KEY_LENGTH} characters")
        connection = await session.connection() if isinstance(session, AsyncSession) else session
        postgres = self.dialect == "postgresql"
        if postgres and key is not None:
            await connection.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))
        values: dict[str, Any] = {
            "msg_id": msg_id,
            "subject": subject,
            "key": key,
            "body": body,
            "headers": json.dumps(merged),
            "created_at": time.time(),
            "attempts": 0,
        }
        await connection.execute(insert(self.tables.messages).values(values))
        if postgres:
            await self._notify_at_commit(connection)
        if isinstance(session, AsyncSession):
            session.info.setdefault(_WAKE, weakref.WeakSet()).add(self)
        return msg_id

    async def _notify_at_commit(self, connection: AsyncConnection) -> None:
        """``NOTIFY`` the relays of every instance, once per transaction: PostgreSQL delivers it at commit
        (and never for a rolled-back transaction)."""
        transaction = connection.sync_connection.get_transaction() if connection.sync_connection else None
        if transaction is not None and connection.info.get(_NOTIFIED) is transaction:
            return
        await connection.execute(select(func.pg_notify(self.name, "")))
        if transaction is not None:
            connection.info[_NOTIFIED] = transaction

    def notify(self) -> None:
        """Wake this process's relay now (after a commit it was not told of: an ``AsyncConnection``)."""
        relay = self._relay
        if relay is not None:
            relay.wake()

    # -- schema and state ----------------------------------------------------------------------------

    async def create_tables(self) -> None:
        """Create the outbox's tables if they do not exist (apps with migrations include ``self.tables``)."""
        async with self.engine.begin() as connection:
            for table in (self.tables.messages, self.tables.leases):
                await connection.run_sync(table.create, checkfirst=True)

    async def stats(self) -> OutboxStats:
        """The backlog, the age of the oldest waiting row, and the failed rows (one query)."""
        table = self.tables.messages
        waiting = table.c.failed.is_(None)
        query = select(
            func.count().filter(waiting), func.min(table.c.created_at).filter(waiting), func.count(table.c.failed)
        )
        async with self.engine.connect() as connection:
            backlog, oldest, failed = (await connection.execute(query)).one()
        return OutboxStats(int(backlog), max(0.0, time.time() - oldest) if oldest is not None else 0.0, int(failed))

    # -- operations (the CLI, the admin page) ---------------------------------------------------------

    async def stuck(self, limit: int = 100, *, older_than: float = 60.0) -> list[StuckRow]:
        """Up to ``limit`` rows that need a look, oldest first: the failed ones, those the server refused at
        least once, and those waiting for longer than ``older_than`` seconds (NATS down, no relay running)."""
        table, now = self.tables.messages, time.time()
        columns = (table.c.id, table.c.msg_id, table.c.subject, table.c.key, table.c.attempts, table.c.created_at)
        query = (
            select(*columns, table.c.failed)
            .where(or_(table.c.failed.is_not(None), table.c.attempts > 0, table.c.created_at < now - older_than))
            .order_by(table.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            StuckRow(row.id, row.msg_id, row.subject, row.key, row.attempts, max(0.0, now - row.created_at), row.failed)
            for row in rows
        ]

    async def retry(self, ids: Iterable[int] | None = None) -> list[int]:
        """Clear the failed state and the refusal count of rows ``ids`` (default: every failed row) so that
        the relay publishes them again (with their own msg id); returns the ids changed, in order (an id of
        no such row, or of a row that was neither failed nor refused, is left out). A retried
        row is published after the rows of its key that went on meanwhile: out of its commit order."""
        table = self.tables.messages
        # Only rows the relay gave up on or was refused for: a row it holds now keeps its lease.
        chosen: ColumnElement[bool] = table.c.failed.is_not(None)
        if ids is not None:
            chosen = table.c.id.in_(list(ids)) & or_(chosen, table.c.attempts > 0)
        async with self.engine.begin() as connection:
            found = [row.id for row in await connection.execute(select(table.c.id).where(chosen).order_by(table.c.id))]
            if found:
                await connection.execute(update(table).where(table.c.id.in_(found)).values(failed=None, attempts=0))
        if found:
            self.notify()
        return found

    # -- the relay's lifecycle (jetstream_lifespan calls these) ---------------------------------------

    @property
    def relay(self) -> Relay | None:
        """The running relay (``None`` before :meth:`start` and after :meth:`stop`)."""
        return self._relay

    async def start(self, broker: BaseBroker) -> None:
        """Start the relay publishing through ``broker`` (connected); idempotent."""
        if self._relay is not None:
            return
        from .relay import Relay

        self._relay = Relay(self, broker)
        await self._relay.start()

    async def stop(self) -> None:
        """Stop the relay: the round in progress finishes (its PubAcks and deletes), nothing new starts."""
        relay, self._relay = self._relay, None
        if relay is not None:
            await relay.stop()

    def __repr__(self) -> str:
        state = "running" if self._relay is not None else "stopped"
        return f"Outbox(name={self.name!r}, dialect={self.dialect!r}, relay={state!r})"


@event.listens_for(Session, "after_commit")
def _wake_after_commit(session: Session) -> None:
    # The in-process wake-up: the relay reads the rows right after they became visible.
    for outbox in session.info.pop(_WAKE, ()):
        outbox.notify()


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_WAKE, None)
