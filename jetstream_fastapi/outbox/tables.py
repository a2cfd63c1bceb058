"""The outbox's tables: the messages waiting to be published, and the relay's lease row (SQLite).

Plain SQLAlchemy Core tables on a ``MetaData`` of the caller's choice, so that migrations (Alembic) can
include them; :meth:`~jetstream_fastapi.outbox.Outbox.create_tables` creates them for apps without any.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text

KEY_LENGTH = 255
"""The longest ordering key (an aggregate id), in characters."""


@dataclass(frozen=True)
class OutboxTables:
    """The message table and the lease table of one outbox."""

    messages: Table
    leases: Table


def outbox_tables(metadata: MetaData | None = None, name: str = "jetstream_outbox") -> OutboxTables:
    """The tables of an outbox called ``name`` (``name`` and ``name + "_lease"``) on ``metadata``.

    The message table's ``id`` is assigned at insert; within one key it follows commit order because
    inserts of one key are serialized (see :meth:`~jetstream_fastapi.outbox.Outbox.publish`).
    """
    metadata = metadata if metadata is not None else MetaData()
    messages = Table(
        name,
        metadata,
        # SQLite's INTEGER PRIMARY KEY is its rowid; AUTOINCREMENT never hands out an id twice.
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("msg_id", String(255), nullable=False),
        Column("subject", Text, nullable=False),
        Column("key", String(KEY_LENGTH), nullable=True),
        Column("body", LargeBinary, nullable=False),
        Column("headers", Text, nullable=False),
        Column("created_at", Float, nullable=False),
        Column("attempts", Integer, nullable=False, default=0),
        Column("lease_owner", String(64), nullable=True),
        Column("lease_until", Float, nullable=True),
        Column("failed", Text, nullable=True),
        Index(f"ix_{name}_key_id", "key", "id"),
        sqlite_autoincrement=True,
    )
    leases = Table(
        f"{name}_lease",
        metadata,
        Column("name", String(255), primary_key=True),
        Column("owner", String(64), nullable=False),
        Column("until", Float, nullable=False),
    )
    return OutboxTables(messages, leases)
