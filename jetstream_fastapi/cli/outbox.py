"""``jetstream-fastapi outbox``: the rows of an app's transactional outbox that need a look, and their retry.

::

    jetstream-fastapi outbox list --database sqlite+aiosqlite:///orders.db
    jetstream-fastapi outbox list --app example_app.app:create_app --json
    jetstream-fastapi outbox retry 12 13 --database postgresql+asyncpg://app@db/app
    jetstream-fastapi outbox retry --all --yes --app example_app.app:create_app

The outbox is the app's (``--app module:attribute``: an ``Outbox``, or an app or app factory made with
``jetstream_lifespan(..., outbox=...)``; its lifespan is not run) or the table ``--table`` in the database
``--database`` (a SQLAlchemy async URL, or ``OUTBOX_DATABASE_URL``). These commands talk to the database
only, never to NATS: the app's relay publishes retried rows at its next round (at once when it runs in
this process, within ``poll_interval`` otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from .commands import Context, _confirm, main, pass_context
from .output import emit, printable, table

T = TypeVar("T")


class _Target:
    """Where the outbox is: ``--app``, or ``--database`` and ``--table``."""

    def __init__(self, app: str | None, database: str | None, name: str) -> None:
        if bool(app) == bool(database):
            raise click.UsageError("give the app's database (--database URL, or OUTBOX_DATABASE_URL) or --app")
        self.app, self.database, self.name = app, database, name

    def run(self, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """Open the outbox, run ``work(outbox)``, close its engine; a database failure is exit status 1."""
        try:
            from sqlalchemy.exc import SQLAlchemyError
        except ImportError:
            needed = "the outbox commands need SQLAlchemy: pip install 'jetstream-fastapi[sql]'"
            raise click.ClickException(needed) from None
        from ..errors import JetStreamError

        async def main() -> T:
            outbox = self._outbox()
            try:
                await _check_table(outbox)
                return await work(outbox)
            finally:
                await outbox.engine.dispose()

        try:
            return asyncio.run(main())
        except (SQLAlchemyError, JetStreamError, OSError) as error:
            # The driver's text may quote the URL: never its password.
            raise click.ClickException(printable(self._redact(f"{type(error).__name__}: {error}"))) from None

    def _outbox(self) -> Any:
        from sqlalchemy.exc import ArgumentError

        from ..outbox import Outbox
        from .apps import load_outbox

        if self.app:
            return load_outbox(self.app)
        from sqlalchemy.ext.asyncio import create_async_engine

        try:
            engine = create_async_engine(str(self.database))
        except (ArgumentError, ImportError, ValueError) as error:
            raise click.ClickException(printable(self._redact(f"invalid --database: {error}"))) from None
        return Outbox(engine, name=self.name)

    def _redact(self, text: str) -> str:
        from ..core.redaction import redact, url_secrets

        return redact(text, url_secrets(self.database or ""))


async def _check_table(outbox: Any) -> None:
    """Refuse a database without the outbox's table (a typo in the URL, another ``--table``)."""
    from sqlalchemy import inspect

    async with outbox.engine.connect() as connection:
        found = await connection.run_sync(lambda sync: inspect(sync).has_table(outbox.tables.messages.name))
    if not found:
        raise click.ClickException(
            printable(f"no outbox table {outbox.tables.messages.name!r} in this database (see --table)")
        )


def _where(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--table", "table_name", default="jetstream_outbox", show_default=True, help="With --database."
    )(func)
    func = click.option(
        "--database",
        "-d",
        envvar="OUTBOX_DATABASE_URL",
        help="The app's database, a SQLAlchemy async URL (sqlite+aiosqlite:///app.db) [env OUTBOX_DATABASE_URL].",
    )(func)
    return click.option("--app", "-a", help="module:attribute of the app, its factory, or its Outbox.")(func)


@main.group("outbox")
def outbox() -> None:
    """List the outbox rows that need a look, and retry them."""


@outbox.command("list")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Also waiting rows older than this many seconds.",
)
@_where
@pass_context
def list_rows(
    ctx: Context, limit: int, older_than: float, app: str | None, database: str | None, table_name: str
) -> None:
    """Rows that failed (they wait for `outbox retry`), were refused by the server, or wait for long."""

    async def work(found: Any) -> list[Any]:
        return list(await found.stuck(limit, older_than=older_than))

    rows = [
        {
            "id": row.id,
            "subject": row.subject,
            "key": row.key,
            "attempts": row.attempts,
            "age": round(row.age, 3),
            "last_error": row.failed,
            "msg_id": row.msg_id,
        }
        for row in _Target(app, database, table_name).run(work)
    ]

    def text() -> str:
        shown = [{**row, "age": _age(row["age"])} for row in rows]
        return table(shown, ["id", "subject", "key", "attempts", "age", "last_error"])

    emit(ctx.as_json, rows, text)


@outbox.command("retry")
@click.argument("ids", nargs=-1, type=click.IntRange(min=1))
@click.option("--all", "every", is_flag=True, help="Every failed row.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (with --all).")
@_where
@pass_context
def retry(
    ctx: Context,
    ids: tuple[int, ...],
    every: bool,
    yes: bool,
    app: str | None,
    database: str | None,
    table_name: str,
) -> None:
    """Clear the failed state of rows IDS (or --all failed rows): the relay publishes them again, with their
    own msg id, after the rows of their key that went on meanwhile."""
    if bool(ids) == every:
        raise click.UsageError("give the row ids, or --all")
    if every:
        _confirm(yes, "Publish every failed outbox row again?")

    async def work(found: Any) -> list[int]:
        return list(await found.retry(None if every else ids))

    done = _Target(app, database, table_name).run(work)
    missing = sorted(set(ids) - set(done))
    emit(ctx.as_json, {"retried": done}, lambda: f"retried {len(done)} row{'s' * (len(done) != 1)}")
    if missing:
        listed = ", ".join(map(str, missing))
        raise click.ClickException(f"no failed or refused outbox row {listed}: not retried")


def _age(seconds: float) -> str:
    """``seconds`` as people read an age: ``42s``, ``5m 3s``, ``2h 10m``, ``3d 4h``."""
    whole = int(seconds)
    for unit, size, smaller, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if whole >= size:
            return f"{whole // size}{unit} {whole % size // small_size}{smaller}"
    return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
