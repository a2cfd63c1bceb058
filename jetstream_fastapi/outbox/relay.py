"""The relay: publishes committed outbox rows through the broker, then deletes them.

One round: claim rows (:mod:`.claims`), publish them pipelined (up to ``concurrency`` publishes in flight, at
most one per key: a key's next row is sent once the PubAck of the one before it came, so each key keeps its id
order; each publish carries the row's msg id, and none starts once the claim's lease ran out), then, in one
short transaction, delete what was stored or dead-lettered (one statement) and give the rest back. A crash
anywhere in a round leaves rows that are published again later with the same msg id: the stream stores them
once if its duplicate window covers :attr:`~jetstream_fastapi.outbox.Outbox.retry_horizon` (checked, with a
warning).

What a failed publish leads to:

* NATS unreachable or slow (not connected, timeouts): the key's chain stops there (its later rows wait,
  keeping their order) and the round's other rows go on; the relay warns once (not once per row),
  retries with a growing delay, and publishes in order once the server answers again.
* The server or the library refuses the message for good (no stream, too large, invalid): the row is
  dead-lettered (``deadletter.OUTBOX.<table>``, with the reason) and deleted; any other refusal is retried
  up to ``max_attempts`` before that. If even the dead letter cannot be stored, the row gets the reason in
  its ``failed`` column, an ERROR is logged and :attr:`Relay.failed` counts it: it waits for an operator.

Wake-ups: right after a commit in this process (a SQLAlchemy session event, or
:meth:`~jetstream_fastapi.outbox.Outbox.notify`), PostgreSQL ``LISTEN`` for commits of every instance, and
``poll_interval`` as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import delete, update

from ..driver import Backoff, Message
from ..errors import (
    ConnectError,
    InvalidArgumentError,
    JetStreamError,
    NoStreamError,
    NotConnectedError,
    ServerVersionError,
    StreamFlagError,
)
from .claims import Claims, RelayLease, Row, RowLeases

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ..core.broker import BaseBroker
    from .tables import OutboxTables

logger = logging.getLogger("jetstream_fastapi")


class RelaySource(Protocol):
    """What a :class:`Relay` reads of its :class:`~jetstream_fastapi.outbox.Outbox`: its table and settings
    (the outbox starts the relay; the relay never needs the rest of it)."""

    name: str
    engine: AsyncEngine
    tables: OutboxTables
    dialect: str
    subjects: tuple[str, ...]
    batch_size: int
    concurrency: int
    poll_interval: float
    lease_ttl: float
    max_attempts: int

    @property
    def retry_horizon(self) -> float:
        """Seconds a row may wait between its first publish and a retry of it."""
        ...


DEAD_LETTER_SOURCE = "OUTBOX"
"""The dead letters of the outbox are ``deadletter.OUTBOX.<table>`` (``list_dead_letters(stream="OUTBOX")``)."""
_REFUSED_FOR_GOOD = (InvalidArgumentError, NoStreamError, StreamFlagError, ServerVersionError)
_UNREACHABLE = (NotConnectedError, ConnectError, TimeoutError)
_RETRY = Backoff(initial=0.05, maximum=5.0, multiplier=2.0, jitter=0.2)


class Fate(enum.Enum):
    """What became of one row in a round."""

    SENT = "sent"
    DEAD = "dead-lettered"
    FAILED = "failed"
    RETRY = "retry"
    STALLED = "stalled"
    LAPSED = "lapsed"
    """Not published: the relay's lease ran out since the claim; the row is whoever holds it now's."""


@dataclass
class Round:
    """The fates of one round's rows."""

    gone: list[int] = field(default_factory=list)
    """Stored or dead-lettered: deleted."""
    failed: dict[int, str] = field(default_factory=dict)
    retried: list[int] = field(default_factory=list)
    given_back: list[int] = field(default_factory=list)
    unreachable: str | None = None
    """Why NATS did not take a row (the first such reason of the round), or ``None``."""


class Relay:
    """Publishes an :class:`~jetstream_fastapi.outbox.Outbox`'s rows through a broker (see the module docstring)."""

    def __init__(self, outbox: RelaySource, broker: BaseBroker) -> None:
        self.outbox = outbox
        self.broker = broker
        self.owner = uuid.uuid4().hex[:16]
        tables = outbox.tables
        self.claims: Claims = (
            # Renewed once less than half the TTL is left, or two polls (a round is due at least every poll).
            RelayLease(
                outbox.engine,
                tables.messages,
                tables.leases,
                self.owner,
                outbox.lease_ttl,
                renew_within=max(outbox.lease_ttl / 2, 2 * outbox.poll_interval),
            )
            if outbox.dialect == "sqlite"
            else RowLeases(outbox.engine, tables.messages, self.owner, outbox.lease_ttl)
        )
        self.published = 0
        """Rows stored in their stream (PubAck received) by this relay."""
        self.dead_lettered = 0
        """Rows refused for good and stored as dead letters."""
        self.failed = 0
        """Rows that could not even be dead-lettered (left with their ``failed`` reason)."""
        self.last_error: str | None = None
        """The last problem a round met (the database or NATS unreachable), or ``None`` after a good round."""
        self._windows: set[str] = set()  # streams whose duplicate window was checked
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._listener: tuple[Any, Any] | None = None  # (SQLAlchemy connection, asyncpg connection)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the duplicate windows of the outbox's ``subjects``, listen (PostgreSQL), start the loop."""
        self._loop = asyncio.get_running_loop()
        for subject in self.outbox.subjects:
            await self._check_window(subject)
        await self._listen()
        self._task = asyncio.create_task(self._run(), name=f"outbox relay {self.outbox.name}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the round in progress (at most ``timeout`` seconds), then give back leases and listener."""
        self._stopping = True
        self.wake()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        await self._unlisten()
        try:
            await self.claims.give_up()
        except Exception as error:  # the database is gone: the leases run out on their own
            logger.warning("outbox %s: could not give back the relay's leases: %s", self.outbox.name, error)

    def wake(self) -> None:
        """Start a round now (thread-safe)."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    # -- the loop ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        troubles = 0
        while not self._stopping:
            self._wake.clear()
            try:
                await self._listen()
                busy, unreachable = await self.round()
            except Exception as error:  # the database: down, restarting, locked
                busy, unreachable = False, f"the database failed: {_first_line(error)}"
            stalled = unreachable is not None
            if unreachable is not None:
                self._trouble(unreachable, troubles)
                troubles += 1
                delay = _RETRY.delay(troubles, random.random())
            else:
                troubles = 0
                self.last_error = None
                delay = self.outbox.poll_interval
            if busy and not stalled:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(delay, self.outbox.poll_interval))

    def _trouble(self, text: str, troubles: int) -> None:
        # The first failure in a row is a warning; the same one again is not repeated at every retry.
        if text != self.last_error or troubles == 0:
            logger.warning("outbox %s relay: %s (retrying)", self.outbox.name, text)
        self.last_error = text

    async def round(self) -> tuple[bool, str | None]:
        """One round: claim, publish, write back. Returns whether a full batch was claimed, and why NATS
        did not take a row (``None``: it took them all)."""
        rows = await self.claims.claim(self.outbox.batch_size)
        if not rows:
            return False, None
        result = await self._publish(rows)
        await self._write_back(result)
        return len(rows) == self.outbox.batch_size, result.unreachable

    async def _publish(self, rows: Sequence[Row]) -> Round:
        chains: dict[object, list[Row]] = {}
        for row in rows:  # in id order, so each chain is in commit order
            chains.setdefault(row.key if row.key is not None else ("", row.id), []).append(row)
        result = Round()
        window = asyncio.Semaphore(self.outbox.concurrency)

        async def chain(chained: list[Row]) -> None:
            for index, row in enumerate(chained):
                async with window:  # a slot per publish: a long chain does not hold one between its rows
                    fate, reason = await self._publish_one(row)
                if fate in (Fate.SENT, Fate.DEAD):
                    result.gone.append(row.id)
                    continue
                if fate is Fate.FAILED:
                    result.failed[row.id] = reason
                    continue
                if fate is Fate.LAPSED:  # not ours any more: left as they are, for the lease's holder
                    return
                # Retried or stalled: the key's later rows wait for it, in order.
                (result.retried if fate is Fate.RETRY else result.given_back).append(row.id)
                result.given_back.extend(later.id for later in chained[index + 1 :])
                if fate is Fate.STALLED and result.unreachable is None:
                    result.unreachable = reason
                return

        await asyncio.gather(*(chain(chained) for chained in chains.values()))
        return result

    async def _publish_one(self, row: Row) -> tuple[Fate, str]:
        if not self.claims.holds():
            # The lease ran out (a stalled round): another relay may be publishing these rows by now.
            return Fate.LAPSED, ""
        message = Message(body=row.body, headers=dict(row.headers), subject=row.subject)
        try:
            ack = await self.broker.publish(row.subject, message, msg_id=row.msg_id)
        except _UNREACHABLE as error:
            # Said once per round by the loop, without the subject: every row meets the same outage.
            return Fate.STALLED, f"NATS did not take the rows ({type(error).__name__}); they wait, in order"
        except _REFUSED_FOR_GOOD as error:
            return await self._dead_letter(row, message, error)
        except JetStreamError as error:
            if row.attempts + 1 >= self.outbox.max_attempts:
                return await self._dead_letter(row, message, error)
            logger.warning(
                "outbox %s: %r refused (attempt %d of %d), retried: %s",
                self.outbox.name,
                row.subject,
                row.attempts + 1,
                self.outbox.max_attempts,
                error,
            )
            return Fate.RETRY, ""
        self.published += 1
        if ack.stream not in self._windows:
            self._windows.add(ack.stream)
            await self._check_window(row.subject)
        return Fate.SENT, ""

    async def _dead_letter(self, row: Row, message: Message, error: JetStreamError) -> tuple[Fate, str]:
        reason = f"{type(error).__name__}: {error}"
        try:
            await self.broker.publish_dead_letter(
                message, error, source=DEAD_LETTER_SOURCE, consumer=self.outbox.name, msg_id=f"dlq-{row.msg_id}"
            )
        except _UNREACHABLE as unreachable:
            return Fate.STALLED, f"NATS did not take a dead letter ({type(unreachable).__name__}); it waits"
        except JetStreamError as refused:
            self.failed += 1
            logger.error(  # noqa: TRY400 - the refusal is described; a traceback adds nothing
                "outbox %s: row %d (%r, msg_id=%s) was refused (%s) and could not be dead-lettered (%s); "
                "it stays in the table with its reason in the `failed` column",
                self.outbox.name,
                row.id,
                row.subject,
                row.msg_id,
                reason,
                refused,
            )
            return Fate.FAILED, reason
        self.dead_lettered += 1
        logger.warning(
            "outbox %s: row %d (%r, msg_id=%s) dead-lettered: %s",
            self.outbox.name,
            row.id,
            row.subject,
            row.msg_id,
            reason,
        )
        return Fate.DEAD, reason

    async def _write_back(self, result: Round) -> None:
        table = self.outbox.tables.messages
        async with self.outbox.engine.begin() as connection:
            if result.gone:
                await connection.execute(delete(table).where(table.c.id.in_(result.gone)))
            for id_, reason in result.failed.items():
                await connection.execute(
                    update(table).where(table.c.id == id_).values(failed=reason, lease_owner=None, lease_until=None)
                )
            if result.retried:
                await connection.execute(
                    update(table)
                    .where(table.c.id.in_(result.retried))
                    .values(attempts=table.c.attempts + 1, lease_owner=None, lease_until=None)
                )
            if result.given_back:
                await connection.execute(
                    update(table).where(table.c.id.in_(result.given_back)).values(lease_owner=None, lease_until=None)
                )

    # -- the duplicate window ------------------------------------------------------------------------

    async def _check_window(self, subject: str) -> None:
        """Warn when the stream of ``subject`` forgets msg ids sooner than the relay may retry."""
        try:
            window = await self.broker.duplicate_window(subject)
        except JetStreamError as error:
            logger.warning(
                "outbox %s: could not read the duplicate window for %r: %s", self.outbox.name, subject, error
            )
            return
        horizon = self.outbox.retry_horizon
        if window < horizon:
            logger.warning(
                "outbox %s: the stream of %r remembers msg ids for %gs, less than the relay's retry horizon of "
                "%gs (lease_ttl + poll_interval): a relay that dies between a PubAck and its delete may store "
                "that message twice. Raise the stream's duplicate_window to at least %gs, or lower lease_ttl.",
                self.outbox.name,
                subject,
                window,
                horizon,
                horizon,
            )

    # -- LISTEN (PostgreSQL) -------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Listen on the outbox's channel (PostgreSQL only), again after the connection was lost."""
        if self.outbox.dialect != "postgresql" or self._stopping:
            return
        if self._listener is not None:
            if not self._listener[1].is_closed():
                return
            await self._unlisten()
        connection = await self.outbox.engine.connect()
        try:
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.add_listener(self.outbox.name, self._notified)
        except BaseException:
            await connection.close()
            raise
        self._listener = (connection, driver)
        self.wake()  # commits announced while nobody listened: read them now

    def _notified(self, *_: object) -> None:
        self.wake()

    async def _unlisten(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        connection, driver = listener
        with contextlib.suppress(Exception):
            if not driver.is_closed():
                await driver.remove_listener(self.outbox.name, self._notified)
        with contextlib.suppress(Exception):
            await connection.invalidate()
        with contextlib.suppress(Exception):
            await connection.close()


def _first_line(error: BaseException) -> str:
    # SQLAlchemy's errors add the statement and its parameters on further lines: the first one says it.
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
