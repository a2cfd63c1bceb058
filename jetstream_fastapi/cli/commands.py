"""``jetstream-fastapi``: streams, consumers, dead letters and schedules of a NATS server, an app's AsyncAPI.

::

    jetstream-fastapi streams
    jetstream-fastapi consumers ORDERS
    jetstream-fastapi dead-letters list --consumer order-processor
    jetstream-fastapi dead-letters replay 12 13
    jetstream-fastapi dead-letters purge --all --yes
    jetstream-fastapi schedules list REPORTS
    jetstream-fastapi schedules remove reports.daily --name evening --yes
    jetstream-fastapi asyncapi example_app.app:create_app > asyncapi.json
    jetstream-fastapi outbox list --database sqlite+aiosqlite:///orders.db     (see :mod:`.outbox`)

The server is ``--server`` or ``NATS_URL``; credentials come from the same variables as
:class:`~jetstream_fastapi.BrokerSettings` (``NATS_CREDS_FILE``, ``NATS_TOKEN``, ``NATS_USER`` and
``NATS_PASSWORD``, ``NATS_TLS_*``). ``--json`` prints JSON for scripts. Exit status: 0 done, 1 a failure
(server unreachable, credentials refused, unknown stream or sequence, ...), 2 a usage error; the message
says what went wrong, without a traceback. Heavy imports (nats-py, FastAPI) wait until a command runs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .output import dead_letter_rows, emit, printable, table

if TYPE_CHECKING:
    from ..backends.jetstream.broker import JetStreamBroker

T = TypeVar("T")
MAX_REPLAY = 1000
"""Most dead letters one ``replay --all`` publishes again (each is read whole first)."""


class Context:
    """The options of the command group, for the commands."""

    def __init__(self, server: str | None, timeout: float, as_json: bool) -> None:
        self.server = server
        self.timeout = timeout
        self.as_json = as_json

    def broker(self) -> JetStreamBroker:
        from pydantic import ValidationError

        from ..errors import InvalidArgumentError
        from ..settings import BrokerSettings

        try:
            settings = BrokerSettings(url=self.server) if self.server else BrokerSettings()
            # Never provision a stream here: the tool looks and replays, it does not shape the server.
            return settings.broker(auto_provision=False, connect_timeout=self.timeout)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
            raise click.ClickException(f"invalid settings: {problems}") from None
        except InvalidArgumentError as error:
            raise click.ClickException(self.redact(str(error))) from None

    def run(self, work: Callable[[JetStreamBroker], Coroutine[Any, Any, T]]) -> T:
        """Connect, run ``work``, disconnect; a library error becomes a message and exit status 1."""
        from ..errors import JetStreamError

        broker = self.broker()

        async def main() -> T:
            async with broker:
                return await work(broker)

        try:
            return asyncio.run(main())
        except JetStreamError as error:
            # An error may quote message data (a dead letter's subject): escaped like the rest.
            raise click.ClickException(printable(self.redact(str(error)))) from None

    def redact(self, text: str) -> str:
        """``text`` without the user info of any URL, ``--server``'s above all."""
        from ..core.redaction import redact, url_secrets

        return redact(text, url_secrets(self.server or ""))


_pass_context = click.make_pass_decorator(Context)


def pass_context(func: Callable[..., Any]) -> Callable[..., Any]:
    """Pass the group's :class:`Context`, and take ``--json`` after the command too (``streams --json``)."""

    def with_json(ctx: Context, /, *args: Any, as_json: bool, **kwargs: Any) -> Any:
        ctx.as_json = ctx.as_json or as_json
        return func(ctx, *args, **kwargs)

    functools.update_wrapper(with_json, func)
    option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
    return option(_pass_context(with_json))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", "-s", envvar="NATS_URL", help="NATS server URL(s), comma-separated [env NATS_URL].")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True, help="Connect timeout (s).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--verbose", "-v", is_flag=True, help="Log what the library and nats-py do (to stderr).")
@click.version_option(package_name="jetstream-fastapi")
@click.pass_context
def main(ctx: click.Context, server: str | None, timeout: float, as_json: bool, verbose: bool) -> None:
    """Operate jetstream-fastapi services: streams, consumers, dead letters, schedules, outbox, AsyncAPI."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        # The error message says what failed; the library's log lines (a reconnect attempt) would repeat it.
        logging.getLogger().addHandler(logging.NullHandler())
    ctx.obj = Context(server, timeout, as_json)


@main.command()
@pass_context
def streams(ctx: Context) -> None:
    """Every stream: subjects, messages, consumers."""

    async def work(broker: JetStreamBroker) -> list[Any]:
        return await broker.inspector().streams()

    found = ctx.run(work)
    rows = [
        {
            "name": s.name,
            "subjects": s.subjects,
            "messages": s.messages,
            "bytes": s.bytes,
            "first_seq": s.first_seq,
            "last_seq": s.last_seq,
            "consumers": s.consumers,
            "storage": s.storage,
            "retention": s.retention,
        }
        for s in found
    ]
    emit(ctx.as_json, rows, lambda: table(rows, ["name", "subjects", "messages", "bytes", "consumers", "retention"]))


@main.command()
@click.argument("stream", required=False)
@pass_context
def consumers(ctx: Context, stream: str | None) -> None:
    """Consumers of STREAM (default: of every stream) with lag, ack pending, redelivered, options."""

    async def work(broker: JetStreamBroker) -> list[Any]:
        inspector = broker.inspector()
        names = [stream] if stream else [s.name for s in await inspector.streams()]
        return [summary for name in names for summary in await inspector.consumers(name)]

    rows = []
    for c in ctx.run(work):
        state = c.state
        rows.append(
            {
                "stream": state.stream,
                "consumer": state.name,
                "durable": c.durable,
                "filter_subject": c.filter_subject,
                "pending": state.pending,
                "ack_pending": state.ack_pending,
                "redelivered": state.redelivered,
                "last_active": state.last_active.isoformat() if state.last_active else None,
                "paused": state.paused,
                "ack_wait": c.ack_wait,
                "max_deliver": c.max_deliver,
                "max_ack_pending": c.max_ack_pending,
                "options": c.options,
            }
        )
    columns = ["stream", "consumer", "filter_subject", "pending", "ack_pending", "redelivered", "last_active"]
    emit(ctx.as_json, rows, lambda: table(rows, [*columns, "paused", "max_deliver", "options"]))


@main.group("dead-letters")
def dead_letters() -> None:
    """List, show, replay and purge dead letters."""


def _filters(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--consumer", "-c", help="Only those terminated by this consumer.")(func)
    return click.option("--stream", help="Only those from this original stream.")(func)


_after = click.option(
    "--after", type=click.IntRange(min=0), help="Only dead letters with a sequence above this one (a page's start)."
)


@dead_letters.command("list")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=100, show_default=True)
@_after
@_filters
@pass_context
def list_letters(ctx: Context, limit: int, after: int | None, stream: str | None, consumer: str | None) -> None:
    """The oldest dead letters (after --after), with why they died."""
    from ..core.dead_letters import next_cursor

    async def work(broker: JetStreamBroker) -> list[Any]:
        return await broker.list_dead_letters(limit, stream=stream, consumer=consumer, after=after)

    found = ctx.run(work)
    letters = [letter.as_dict() for letter in found]
    emit(
        ctx.as_json, letters, lambda: table(dead_letter_rows(letters), ["seq", "subject", "consumer", "error", "body"])
    )
    following = next_cursor(found, limit)
    if following is not None:
        click.echo(f"more dead letters may follow: the next page is --after {following}", err=True)


@dead_letters.command("show")
@click.argument("seq", type=click.IntRange(min=1))
@pass_context
def show(ctx: Context, seq: int) -> None:
    """Dead letter SEQ: its body, headers and error."""

    async def work(broker: JetStreamBroker) -> Any:
        return await broker.dead_letter(seq)

    letter = ctx.run(work).as_dict()

    def text() -> str:
        # Everything but the body on one line each; the body keeps its line breaks and tabs.
        fields = ("seq", "subject", "stream", "sequence", "consumer", "attempts")
        lines = [f"{key}: {letter[key]}" for key in fields]
        lines += [f"error: {letter['error_type']}: {letter['error']}", f"dead since: {letter['timestamp']}", "headers:"]
        lines += [f"  {key}: {value}" for key, value in dict(letter["headers"]).items()]
        return "\n".join([*map(printable, lines), "body:", printable(str(letter["body"]), keep="\n\t")])

    emit(ctx.as_json, letter, text)


def _confirm(yes: bool, question: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError(f"{question} Not confirmed: pass --yes to confirm without a terminal.")
    click.confirm(question, abort=True)


def _selection(seqs: Sequence[int], every: bool, stream: str | None, consumer: str | None) -> None:
    if seqs and (every or stream or consumer):
        raise click.UsageError("give sequence numbers, or --all (with --stream/--consumer), not both")
    if not seqs and not every:
        raise click.UsageError("give the sequence numbers, or --all")
    if (stream or consumer) and not every:
        raise click.UsageError("--stream and --consumer select with --all")


@dead_letters.command()
@click.argument("seqs", nargs=-1, type=click.IntRange(min=1))
@click.option("--all", "every", is_flag=True, help="Every dead letter (of --stream/--consumer).")
@_filters
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (with --all).")
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(1, MAX_REPLAY),
    default=100,
    show_default=True,
    help="With --all: the most dead letters (the oldest) this call replays.",
)
@_after
@pass_context
def replay(
    ctx: Context,
    seqs: tuple[int, ...],
    every: bool,
    stream: str | None,
    consumer: str | None,
    yes: bool,
    limit: int,
    after: int | None,
) -> None:
    """Publish dead letters SEQS (or --all after --after, --limit at a time) again to their original
    subjects, and remove them.

    A letter replay refuses (malformed, truncated, a subject its stream does not capture, its stream or
    consumer gone) is skipped with the reason, and the others go on; one the server answers ``duplicate``
    (replayed before) is kept. Exit status 1 if any was skipped."""
    _selection(seqs, every, stream, consumer)
    if after is not None and not every:
        raise click.UsageError("--after selects with --all")
    if every:
        which = " of ".join(filter(None, ["every dead letter", consumer and f"consumer {consumer}", stream]))
        _confirm(yes, f"Replay {which} (the oldest {limit})?")
    more = False

    async def work(broker: JetStreamBroker) -> list[dict[str, Any]]:
        nonlocal more
        if every:  # one more than asked: whether some remain
            letters = await broker.list_dead_letters(limit + 1, stream=stream, consumer=consumer, after=after)
            more, letters = len(letters) > limit, letters[:limit]
        else:
            letters = [await broker.dead_letter(seq) for seq in seqs]  # every one exists before the first is replayed
        return [await _replay_one(broker, letter) for letter in letters]

    done = ctx.run(work)
    skipped = [d for d in done if d["outcome"] == "skipped"]
    if more:
        hint = f" with --after {done[-1]['seq']} to pass the skipped ones" if skipped else ""
        click.echo(f"more dead letters remain (--limit {limit}): run the command again{hint}", err=True)
    emit(ctx.as_json, done, lambda: "\n".join(_replay_line(d) for d in done))
    if skipped:
        count = f"{len(skipped)} dead letter{'s' * (len(skipped) != 1)}"
        click.echo(f"{count} skipped (kept): {', '.join(str(d['seq']) for d in skipped)}", err=True)
        sys.exit(1)


async def _replay_one(broker: JetStreamBroker, letter: Any) -> dict[str, Any]:
    """Replay ``letter`` (a :class:`~jetstream_fastapi.core.dead_letters.DeadLetter`): what became of it, as
    fields (``outcome`` ``replayed``, ``kept`` or ``skipped``, and the ``reason``)."""
    from ..errors import DeadLetterNotFoundError, DeadLetterReplayError, NoStreamError

    row: dict[str, Any] = {"seq": letter.seq, "outcome": "replayed", "stream": None, "stream_seq": None}
    row |= {"duplicate": False, "reason": None}
    try:
        ack = await broker.replay_dead_letter(letter.seq)
    except (DeadLetterReplayError, NoStreamError, DeadLetterNotFoundError) as error:
        # Malformed and partial letters are refused here too (DeadLetterReplayError), nothing published.
        return row | {"outcome": "skipped", "reason": str(error)}
    row |= {"stream": ack.stream, "stream_seq": ack.seq, "duplicate": ack.duplicate}
    if ack.duplicate:
        row |= {"outcome": "kept", "reason": "replayed before (duplicate): nothing stored, the letter is kept"}
    return row


def _replay_line(done: dict[str, Any]) -> str:
    seq, where = done["seq"], f"{done['stream']} #{done['stream_seq']}"
    if done["outcome"] == "skipped":
        line = f"skipped {seq}: {done['reason']}"
    elif done["outcome"] == "kept":
        line = f"kept (duplicate) {seq}: replayed before as {where}, nothing stored again"
    else:
        line = f"replayed {seq} as {where}"
    return printable(line)


@dead_letters.command()
@click.argument("seqs", nargs=-1, type=click.IntRange(min=1))
@click.option("--all", "every", is_flag=True, help="Every dead letter (of --stream/--consumer).")
@_filters
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def purge(
    ctx: Context, seqs: tuple[int, ...], every: bool, stream: str | None, consumer: str | None, yes: bool
) -> None:
    """Delete dead letters SEQS (or --all) for good; asks first unless --yes."""
    _selection(seqs, every, stream, consumer)
    if seqs:
        _confirm(yes, f"Delete dead letters {', '.join(map(str, seqs))} for good?")
    else:
        which = " of ".join(filter(None, ["every dead letter", consumer and f"consumer {consumer}", stream]))
        _confirm(yes, f"Delete {which} for good?")

    async def work(broker: JetStreamBroker) -> int:
        if seqs:
            return await broker.purge_dead_letters(seqs)
        return await broker.purge_dead_letters(stream=stream, consumer=consumer)

    purged = ctx.run(work)
    emit(ctx.as_json, {"purged": purged}, lambda: f"purged {purged} dead letter{'s' * (purged != 1)}")


@main.group("schedules")
def schedules() -> None:
    """List and remove recurring schedules (``ConsumerRouter.schedule``)."""


@schedules.command("list")
@click.argument("stream", required=False)
@pass_context
def list_schedules(ctx: Context, stream: str | None) -> None:
    """The recurring schedules kept in STREAM (default: in every stream)."""

    async def work(broker: JetStreamBroker) -> list[Any]:
        names = [stream] if stream else [s.name for s in await broker.inspector().streams()]
        return [info for name in names for info in await broker.schedules(name)]

    rows = [
        {
            "stream": info.stream,
            "name": info.name,
            "subject": info.subject,
            "schedule": info.pattern,
            "timezone": info.timezone,
            "seq": info.seq,
            "headers": info.headers,
        }
        for info in ctx.run(work)
    ]
    emit(ctx.as_json, rows, lambda: table(rows, ["stream", "name", "subject", "schedule", "timezone", "seq"]))


@schedules.command("remove")
@click.argument("subject")
@click.option("--name", help="The schedule's name (default: SUBJECT).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def remove_schedule(ctx: Context, subject: str, name: str | None, yes: bool) -> None:
    """Delete the recurring schedule of SUBJECT (named --name): it fires no more. An app that still
    declares it writes it again at its next start."""
    _confirm(yes, f"Delete the schedule {name or subject} of {subject}?")

    async def work(broker: JetStreamBroker) -> bool:
        return await broker.remove_schedule(subject, name=name)

    removed = ctx.run(work)
    if not removed:
        raise click.ClickException(f"no recurring schedule {name or subject!r} of {subject!r}")
    emit(ctx.as_json, {"removed": name or subject}, lambda: f"removed schedule {name or subject}")


@main.command()
@click.argument("app")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="Write to a file.")
def asyncapi(app: str, output: str | None) -> None:
    """The AsyncAPI document of APP (module:attribute: a FastAPI app including asyncapi_router(), a factory
    of one, or a ConsumerRouter)."""
    from .apps import load_document

    document = load_document(app)
    text = json.dumps(document, indent=2) + "\n"
    if output:
        with open(output, "w", encoding="utf-8") as file:
            file.write(text)
    else:
        click.echo(text, nl=False)
