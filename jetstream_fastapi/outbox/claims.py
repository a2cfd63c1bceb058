"""Which rows a relay may publish now, so that several app instances share the outbox safely.

* :class:`RowLeases` (PostgreSQL, and any database with ``FOR UPDATE SKIP LOCKED``): each relay claims a
  batch of rows in a short transaction, skipping rows another relay is claiming, and leases them
  (``lease_owner``, ``lease_until``). A key's rows are claimed as a prefix only: a row whose key has an
  earlier waiting row this relay did not get (leased or being claimed by another) is left alone, so the
  rows of one key are never published by two relays at once, nor out of order.
* :class:`RelayLease` (SQLite): one writer at a time anyway; a single relay holds a lease row and publishes
  every row in id order (the commit order on SQLite); the other instances stand by and take over when the
  lease runs out (a relay that died). The holder writes the lease row only when it is running low, so its
  rounds only read (no write lock, no fsync on SQLite).

A relay publishes a claimed row only while its lease holds (:meth:`Claims.holds`, against the ``until`` it
wrote): after that, the row is the new holder's.

A relay that stops (or stalls) for longer than its lease loses it; another may then publish the same rows:
the stream stores the second publish once (same msg id, within its duplicate window).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Row as SqlRow
from sqlalchemy import Table, or_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger = logging.getLogger("jetstream_fastapi")


@dataclass(frozen=True, slots=True)
class Row:
    """One waiting message of the outbox table."""

    id: int
    msg_id: str
    subject: str
    key: str | None
    body: bytes
    headers: dict[str, str]
    attempts: int

    @classmethod
    def of(cls, row: SqlRow[Any]) -> Row:
        """From a selected row of the message table."""
        return cls(row.id, row.msg_id, row.subject, row.key, bytes(row.body), json.loads(row.headers), row.attempts)


class Claims(Protocol):
    """How a relay gets the rows it may publish now."""

    async def claim(self, limit: int) -> list[Row]:
        """Up to ``limit`` rows, in id order, that this relay alone publishes now."""
        ...

    def holds(self) -> bool:
        """Whether the rows of the last claim are still this relay's to publish (their lease has not run
        out: after it, another relay may publish them)."""
        ...

    async def give_up(self) -> None:
        """Hand everything this relay holds back (it stops)."""
        ...


class RowLeases:
    """Row leases with ``FOR UPDATE SKIP LOCKED`` (see the module docstring)."""

    def __init__(self, engine: AsyncEngine, table: Table, owner: str, ttl: float) -> None:
        self.engine, self.table, self.owner, self.ttl = engine, table, owner, ttl
        self.until = 0.0
        """When the rows of the last claim stop being this relay's."""

    def holds(self) -> bool:
        return time.time() < self.until

    async def claim(self, limit: int) -> list[Row]:
        table, now = self.table, time.time()
        free = or_(table.c.lease_until.is_(None), table.c.lease_until < now)
        candidates = (
            select(table.c.id, table.c.key)
            .where(table.c.failed.is_(None), free)
            .order_by(table.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with self.engine.begin() as connection:
            found = [(row.id, row.key) for row in await connection.execute(candidates)]
            kept = await self._key_prefixes(connection, found)
            if not kept:
                return []
            await connection.execute(
                update(table).where(table.c.id.in_(kept)).values(lease_owner=self.owner, lease_until=now + self.ttl)
            )
            self.until = now + self.ttl
            rows = await connection.execute(select(table).where(table.c.id.in_(kept)).order_by(table.c.id))
            return [Row.of(row) for row in rows]

    async def _key_prefixes(self, connection: AsyncConnection, found: list[tuple[int, str | None]]) -> list[int]:
        """The claimed ids that start their key's waiting rows: for each key, the claimed rows before the
        first waiting row of that key this relay did not claim."""
        ids = {id_ for id_, _ in found}
        keys = {key for _, key in found if key is not None}
        cut: dict[str, int] = {}
        if keys:
            table = self.table
            waiting = (
                select(table.c.key, table.c.id)
                .where(table.c.key.in_(keys), table.c.failed.is_(None), table.c.id <= max(ids))
                .order_by(table.c.id)
            )
            for key, id_ in await connection.execute(waiting):
                if key not in cut and id_ not in ids:
                    cut[key] = id_
        return [id_ for id_, key in found if key is None or id_ < cut.get(key, id_ + 1)]

    async def give_up(self) -> None:
        table = self.table
        async with self.engine.begin() as connection:
            await connection.execute(
                update(table).where(table.c.lease_owner == self.owner).values(lease_owner=None, lease_until=None)
            )


class RelayLease:
    """One relay at a time, by a lease row (see the module docstring).

    The holder renews the lease only once less than ``renew_within`` seconds of it are left (half the TTL
    by default): the other rounds read the lease row and the rows, and on SQLite a transaction that only
    reads takes no write lock and commits without an fsync. A standby reads too, and writes only once the
    lease ran out (or was given up).
    """

    def __init__(
        self, engine: AsyncEngine, table: Table, leases: Table, owner: str, ttl: float, renew_within: float = 0.0
    ) -> None:
        self.engine, self.table, self.leases, self.owner, self.ttl = engine, table, leases, owner, ttl
        self.renew_within = renew_within or ttl / 2
        self.clock: Callable[[], float] = time.time
        self.until = 0.0
        """When this relay's lease runs out, as it last wrote it (``0.0``: not held)."""
        self.holding = False

    def holds(self) -> bool:
        """Whether the lease is still this relay's: no other relay takes it before ``until``."""
        return self.clock() < self.until

    async def claim(self, limit: int) -> list[Row]:
        table = self.table
        async with self.engine.begin() as connection:
            if not await self._hold(connection):
                return []
            rows = await connection.execute(
                select(table).where(table.c.failed.is_(None)).order_by(table.c.id).limit(limit)
            )
            return [Row.of(row) for row in rows]

    async def _hold(self, connection: AsyncConnection) -> bool:
        """Take or renew the lease when needed; whether this relay holds it now."""
        leases, now = self.leases, self.clock()
        found = await connection.execute(select(leases.c.owner, leases.c.until).where(leases.c.name == self.table.name))
        current = found.first()
        mine = current is not None and current.owner == self.owner
        if mine and self.until - now > self.renew_within:
            holding = True  # long enough left: this round only reads
        elif current is None or mine or current.until < now:
            holding = await self._take(connection, now, exists=current is not None)
        else:
            holding = False
        if not holding:
            self.until = 0.0
        if holding != self.holding:
            self.holding = holding
            logger.info("outbox %s: this relay %s", self.table.name, "publishes now" if holding else "stands by")
        return holding

    async def _take(self, connection: AsyncConnection, now: float, *, exists: bool) -> bool:
        """Write the lease row as this relay's until ``now + ttl``; whether it is."""
        leases, until = self.leases, now + self.ttl
        if exists:
            # The condition again, in the write: a relay that took the lapsed lease since the read keeps it.
            mine_or_lapsed = or_(leases.c.owner == self.owner, leases.c.until < now)
            statement: Any = (
                update(leases)
                .where(leases.c.name == self.table.name, mine_or_lapsed)
                .values(owner=self.owner, until=until)
            )
        else:  # another relay inserting it first holds it
            statement = (
                sqlite_insert(leases)
                .values(name=self.table.name, owner=self.owner, until=until)
                .on_conflict_do_nothing()
            )
        written = await connection.execute(statement)
        if written.rowcount != 1:
            return False
        self.until = until
        return True

    async def give_up(self) -> None:
        leases = self.leases
        self.until = 0.0  # before the write: nothing is published from here on, even if it fails
        async with self.engine.begin() as connection:
            await connection.execute(update(leases).where(leases.c.owner == self.owner).values(until=0.0))
        self.holding = False
