"""``jetstream-fastapi outbox list|retry``, as a subprocess on a SQLite file, with the relay of a real
nats-server's app publishing what the command retried."""

from __future__ import annotations

import asyncio
import subprocess
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.outbox import Outbox
from jetstream_fastapi.server import NatsServer
from tests.test_cli import cli, ok

HOSTILE = "\x1b]0;owned\x07\u202eevil\nline"
"""Text a publisher controls (a key, a server's refusal quoting a subject): shown escaped, never acted on."""


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    made = Outbox(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"), poll_interval=0.2, lease_ttl=1.0)
    await made.create_tables()
    yield made
    await made.stop()
    await made.engine.dispose()


async def _failed_row(outbox: Outbox, subject: str, key: str) -> tuple[int, str]:
    """A row as a relay leaves one it could neither publish nor dead-letter: its id and msg id."""
    async with AsyncSession(outbox.engine) as session, session.begin():
        msg_id = await outbox.publish(session, subject, "the order", key=key)
    table = outbox.tables.messages
    async with outbox.engine.begin() as connection:
        await connection.execute(update(table).where(table.c.msg_id == msg_id).values(failed=f"Refused: {HOSTILE}"))
    [row] = [row for row in await outbox.stuck() if row.msg_id == msg_id]
    return row.id, msg_id


async def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, None, *args, env=env)


async def test_list_shows_a_failed_row_escaped_and_retry_has_the_relay_publish_it(
    nats_server: NatsServer, outbox: Outbox, prefix: str
) -> None:
    database = str(outbox.engine.url)
    row_id, msg_id = await _failed_row(outbox, f"{prefix}.created", key=f"k{HOSTILE}")
    async with JetStreamBroker(nats_server.url, fetch_wait=1.0) as broker:
        got: list[Message] = []
        arrived = asyncio.Event()

        async def handler(message: Message) -> None:
            got.append(message)
            arrived.set()

        await broker.subscribe(f"{prefix}.created", handler, queue="reader")
        await outbox.start(broker)  # the relay leaves the failed row alone

        text = ok(await _cli("outbox", "list", "--database", database))
        assert text.splitlines()[0].split() == ["ID", "SUBJECT", "KEY", "ATTEMPTS", "AGE", "LAST_ERROR"]
        assert "\x1b" not in text and "\u202e" not in text and text.count("\n") == 2
        assert "k\\x1b]0;owned\\x07\\u202eevil\\nline" in text
        [listed] = ok(await _cli("outbox", "list", "--json", "--database", database))
        assert (listed["id"], listed["msg_id"], listed["key"]) == (row_id, msg_id, f"k{HOSTILE}")
        assert (listed["attempts"], listed["last_error"]) == (0, f"Refused: {HOSTILE}")
        assert not arrived.is_set()

        retried = ok(await _cli("outbox", "retry", str(row_id), "--json", "--database", database))
        assert retried == {"retried": [row_id]}
        async with asyncio.timeout(20):
            await arrived.wait()  # the relay's next round (another process cleared the row: no wake-up)
        assert [(m.msg_id, m.body) for m in got] == [(msg_id, b"the order")]

        again = await _cli("outbox", "retry", str(row_id), "--database", database)
        assert again.returncode == 1
        assert f"no failed or refused outbox row {row_id}" in again.stderr


async def test_retry_all_asks_first_and_the_app_is_found_through_its_lifespan(
    outbox: Outbox, prefix: str, tmp_path: Path
) -> None:
    first, _ = await _failed_row(outbox, f"{prefix}.a", key="a")
    second, _ = await _failed_row(outbox, f"{prefix}.b", key="b")
    (tmp_path / "ops_app.py").write_text(
        textwrap.dedent(f"""
            from fastapi import APIRouter, FastAPI
            from sqlalchemy.ext.asyncio import create_async_engine
            from jetstream_fastapi import InMemoryBroker, jetstream_lifespan
            from jetstream_fastapi.outbox import Outbox

            def create_app():
                outbox = Outbox(create_async_engine({str(outbox.engine.url)!r}))
                app = FastAPI(lifespan=jetstream_lifespan(InMemoryBroker(), outbox=outbox))
                app.include_router(APIRouter())  # FastAPI wraps the lifespan: the outbox is found through it
                return app

            app = create_app()
        """)
    )
    env = {"PYTHONPATH": str(tmp_path)}
    listed = ok(await _cli("outbox", "list", "--json", "--app", "ops_app:app", env=env))
    assert [row["id"] for row in listed] == [first, second]
    unconfirmed = await _cli("outbox", "retry", "--all", "--app", "ops_app:create_app", env=env)
    assert unconfirmed.returncode == 2
    assert "--yes" in unconfirmed.stderr
    done = ok(await _cli("outbox", "retry", "--all", "--yes", "--app", "ops_app:create_app", env=env))
    assert done == "retried 2 rows\n"
    assert [row.failed for row in await outbox.stuck(older_than=0)] == [None, None]


async def test_the_outbox_commands_say_what_is_wrong(tmp_path: Path) -> None:
    both = await _cli("outbox", "list", "--database", "sqlite+aiosqlite:///x.db", "--app", "a:b")
    assert both.returncode == 2
    empty = tmp_path / "empty.db"
    missing = await _cli("outbox", "list", "--database", f"sqlite+aiosqlite:///{empty}")
    assert missing.returncode == 1
    assert "no outbox table 'jetstream_outbox'" in missing.stderr
    refused = await _cli("outbox", "list", "--database", "postgresql+asyncpg://ops:pw-s3cret@127.0.0.1:1/app")
    assert refused.returncode == 1
    assert "pw-s3cret" not in refused.stderr + refused.stdout
    not_an_app = await _cli("outbox", "list", "--app", "example_app.app:ORDERS_CREATED")
    assert not_an_app.returncode == 1
    assert "no Outbox" in not_an_app.stderr
    nothing = await _cli("outbox", "retry", "--database", "sqlite+aiosqlite:///x.db")
    assert nothing.returncode == 2
