"""The NATS permissions docs/security.md tells operators to grant the app's user are enough, and no wider.

The permission table of that page is parsed here and turned into a nats-server ``authorization`` block, so
the page and this test cannot drift: a real server enforces exactly the documented permissions while the
library runs every feature as that user (connect, declared and auto-provisioned streams, publish with a
msg id, a TTL and a delay, handlers, request/reply, dead letters listed, replayed and purged, pause and
resume, a recurring schedule, key order, an exclusive queue, the readiness probe, the command-line tool).
The server logs every ``Publish Violation`` and ``Subscription Violation``; none may appear. Then the
rows the page says an app can drop are dropped for an app that meets their conditions, and the app user
is shown to be unable to touch a stream it does not own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from click.testing import CliRunner
from nats.js.api import StreamConfig

from jetstream_fastapi import JetStreamBroker, Message, Reject
from jetstream_fastapi.cli.commands import main as cli_main
from jetstream_fastapi.integration.health import check_readiness
from jetstream_fastapi.server import NatsServer
from tests.conftest import FAST_BACKOFF, WAIT, eventually

SECURITY = Path(__file__).resolve().parent.parent / "docs" / "security.md"
TABLE_HEADING = "## NATS permissions to grant the app's user"
APP, APP_PASSWORD = "orders-app", "orders-app-password"
ADMIN, ADMIN_PASSWORD = "operator", "operator-password"
# What ``<token>`` stands for in the table: the first subject token of each stream the app keeps
# schedules in (delayed messages and recurring schedules). The app itself publishes on ``orders.>`` only.
TOKENS = ("orders", "reports")
VIOLATION = re.compile(r"(Publish|Subscription) Violation[^\n]*")
TRACED = re.compile(r"<<- \[(PUB|HPUB|SUB) (\S+)")


@dataclass(frozen=True)
class Grant:
    """One row of the page's permission table."""

    action: str  # "publish" or "subscribe"
    subjects: tuple[str, ...]  # with <token> filled in
    needed_unless: str  # the page's "not needed when" cell; empty: always needed


def documented_grants() -> list[Grant]:
    """The rows of the permission table of docs/security.md, ``<token>`` filled in."""
    text = SECURITY.read_text(encoding="utf-8")
    section = text[text.index(TABLE_HEADING) :]
    table = re.search(r"((?:^\|.*\|\n)+)", section, re.MULTILINE)
    assert table, "the permission table is gone from docs/security.md"
    header, _separator, *lines = table.group(1).splitlines()
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "permission",
        "subject",
        "what needs it",
        "not needed when",
    ]
    grants = []
    for line in lines:
        action, subject_cell, _why, unless = (cell.strip() for cell in line.strip("|").split("|"))
        subjects = []
        for subject in re.findall(r"`([^`]+)`", subject_cell):
            filled = [subject.replace("<token>", token) for token in TOKENS] if "<token>" in subject else [subject]
            for one in filled:
                assert re.fullmatch(r"[\w$.*>-]+", one), f"not a subject in the table: {subject!r}"
            subjects += filled
        assert action in ("publish", "subscribe") and subjects, line
        grants.append(Grant(action, tuple(subjects), unless))
    return grants


def authorization(grants: list[Grant]) -> str:
    """A nats-server configuration: the app user allowed exactly ``grants``, the operator everything."""

    def allow(action: str) -> str:
        subjects = sorted({s for grant in grants if grant.action == action for s in grant.subjects})
        return "[" + ", ".join(f'"{subject}"' for subject in subjects) + "]"

    return f"""
authorization {{
  users = [
    {{
      user: "{APP}", password: "{APP_PASSWORD}"
      permissions: {{ publish: {{ allow: {allow("publish")} }}, subscribe: {{ allow: {allow("subscribe")} }} }}
    }}
    {{ user: "{ADMIN}", password: "{ADMIN_PASSWORD}" }}
  ]
}}
"""


def violations(server: NatsServer) -> list[str]:
    """The server's log lines about a permission violation (it logs each one at ERROR)."""
    return [match.group(0) for match in VIOLATION.finditer(server.log)]


def used(server: NatsServer) -> set[tuple[str, str]]:
    """``(action, subject)`` of every PUB, HPUB and SUB a client sent, from the server's protocol trace."""
    found = set()
    for verb, subject in TRACED.findall(server.log):
        found.add(("subscribe" if verb == "SUB" else "publish", subject))
    return found


def matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject ``pattern`` (with ``*`` and ``>``) covers ``subject``."""
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or token not in ("*", have[index]):
            return False
    return len(want) == len(have)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """Starts a nats-server of this test's own with an authorization block for ``grants`` (or the
    configuration ``text``); ``trace`` logs every protocol line a client sends (``-V``)."""
    started: list[NatsServer] = []

    def start(grants: Sequence[Grant] = (), *, text: str = "", trace: bool = False) -> NatsServer:
        config = tmp_path / f"auth{len(started)}.conf"
        config.write_text(text or authorization(list(grants)), encoding="utf-8")
        server = NatsServer(args=["-c", str(config), *(["-V"] if trace else [])]).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def app_brokers() -> AsyncIterator[Any]:
    """Makes brokers that log in as the app user; all disconnected at teardown."""
    made: list[JetStreamBroker] = []

    def make(server: NatsServer, **options: Any) -> JetStreamBroker:
        options.setdefault("backoff", FAST_BACKOFF)
        options.setdefault("fetch_wait", 1.0)
        broker = JetStreamBroker(server.url, user=APP, password=APP_PASSWORD, **options)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.disconnect()


class Seen:
    """What the handlers received, with a condition to wait on."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {}
        self.changed = asyncio.Condition()

    async def add(self, name: str, body: bytes) -> None:
        async with self.changed:
            self.bodies.setdefault(name, []).append(body)
            self.changed.notify_all()

    async def wait_for(self, name: str, count: int) -> list[bytes]:
        async with asyncio.timeout(WAIT), self.changed:
            await self.changed.wait_for(lambda: len(self.bodies.get(name, [])) >= count)
        return self.bodies[name]


def run_cli(server: NatsServer, *args: str) -> str:
    env = {"NATS_URL": server.url, "NATS_USER": APP, "NATS_PASSWORD": APP_PASSWORD}
    result = CliRunner().invoke(cli_main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


async def test_every_feature_runs_with_exactly_the_documented_permissions(start_server: Any, app_brokers: Any) -> None:
    grants = documented_grants()
    server = start_server(grants, trace=True)
    orders = StreamConfig(name="ORDERS", subjects=["orders.>"], allow_msg_ttl=True, allow_msg_schedules=True)
    broker = app_brokers(server, streams=[orders])
    await broker.connect()  # declares ORDERS and DEAD_LETTERS
    seen = Seen()
    poisoned = {"orders.poison": True}

    async def created(msg: Message) -> None:
        await seen.add("created", msg.body)

    async def quote(msg: Message) -> bytes:
        return b"price: 42 for " + msg.body

    async def poison(msg: Message) -> None:
        if poisoned[msg.subject]:
            raise Reject("not an order")
        await seen.add("poison", msg.body)

    async def event(msg: Message) -> None:
        await seen.add(msg.subject, msg.body)

    async def tick(msg: Message) -> None:
        await seen.add("tick", msg.body)

    await broker.subscribe("orders.created", created, queue="order-processor")
    await broker.subscribe("orders.quote", quote, queue="quoter")
    await broker.subscribe("orders.poison", poison, queue="poison-eater", max_deliver=2)
    await broker.subscribe("orders.*.events", event, queue="order-projector", key_order=True, partitions=2)
    exclusive = await broker.subscribe("reports.daily", tick, queue="report-builder", exclusive=True)
    ephemeral = await broker.subscribe("orders.created", created)  # no queue: deleted at unsubscribe

    # Publish: a msg id (and its duplicate), a TTL, a delay.
    first = await broker.publish("orders.created", b"o-1", msg_id="order-1")
    assert (await broker.publish("orders.created", b"o-1", msg_id="order-1")).duplicate
    await broker.publish("orders.created", b"o-2", ttl=60)
    await broker.publish("orders.created", b"o-3", delay=0.5)
    assert first.stream == "ORDERS"
    assert sorted(await seen.wait_for("created", 6)) == sorted([b"o-1", b"o-2", b"o-3"] * 2)

    # Request and reply.
    reply = await broker.request("orders.quote", b"book", timeout=WAIT)
    assert reply.body == b"price: 42 for book"

    # Key order.
    await broker.publish_many([("orders.o1.events", b"1"), ("orders.o2.events", b"1"), ("orders.o1.events", b"2")])
    assert await seen.wait_for("orders.o1.events", 2) == [b"1", b"2"]

    # A recurring schedule in an auto-provisioned stream, ticking into the exclusive queue.
    await broker.declare_schedule("reports.daily", every=1, message=b"tick")
    await seen.wait_for("tick", 1)
    assert exclusive.active is True
    assert [schedule.subject for schedule in await broker.schedules("REPORTS")] == ["reports.daily"]
    assert await broker.remove_schedule("reports.daily")

    # Dead letters: one replayed (its handler fixed), one purged.
    await broker.publish("orders.poison", b"p-1")
    await broker.wait_until_idle(timeout=WAIT)
    [letter] = await broker.list_dead_letters()
    assert (letter.subject, letter.consumer) == ("orders.poison", "poison-eater")
    poisoned["orders.poison"] = False
    await broker.replay_dead_letter(letter.seq)
    assert await seen.wait_for("poison", 1) == [b"p-1"]
    poisoned["orders.poison"] = True
    await broker.publish("orders.poison", b"p-2")
    await broker.wait_until_idle(timeout=WAIT)
    assert await broker.purge_dead_letters(consumer="poison-eater") == 1

    # Pause and resume; the readiness probe.
    await broker.pause("order-processor", until=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    await broker.resume("order-processor")
    assert (await check_readiness(broker)).ready

    # The command-line tool, as the app user.
    assert "ORDERS" in await asyncio.to_thread(run_cli, server, "streams")
    assert "order-processor" in await asyncio.to_thread(run_cli, server, "consumers", "ORDERS")
    assert "[]" in await asyncio.to_thread(run_cli, server, "--json", "dead-letters", "list")

    await ephemeral.unsubscribe()
    await broker.disconnect()  # gives the exclusive queue's pin up

    # A new release declares ORDERS with a limit more, and updates it.
    limited = dataclasses.replace(orders, max_msgs=100_000)
    async with app_brokers(server, streams=[limited], stream_mismatch="update"):
        pass
    assert violations(server) == []
    # And no row is there for nothing: every documented subject was used by something above.
    sent = used(server)
    for grant in grants:
        for pattern in grant.subjects:
            assert any(action == grant.action and matches(pattern, subject) for action, subject in sent), pattern


async def test_the_rows_the_page_calls_optional_are_not_needed(start_server: Any, app_brokers: Any) -> None:
    # An app that meets every "not needed when" condition: its stream made by operations beforehand,
    # auto_provision=False, dead_letters=False, every handler on a queue, no delays or schedules, no
    # requests answered, no pause, no exclusive queue, no command-line tool.
    grants = documented_grants()
    always = [grant for grant in grants if not grant.needed_unless]
    assert len(always) < len(grants)
    server = start_server(always)
    orders = StreamConfig(name="ORDERS", subjects=["orders.>"])
    async with JetStreamBroker(server.url, user=ADMIN, password=ADMIN_PASSWORD, streams=[orders]):
        pass  # operations create the stream
    broker = app_brokers(server, streams=[orders], auto_provision=False, dead_letter=False)
    await broker.connect()
    seen = Seen()

    async def created(msg: Message) -> None:
        if msg.body == b"poison":
            raise Reject("not an order")  # terminated, not dead-lettered
        await seen.add("created", msg.body)

    await broker.subscribe("orders.created", created, queue="order-processor")
    await broker.publish("orders.created", b"poison")
    await broker.publish("orders.created", b"o-1", msg_id="order-1")
    assert await seen.wait_for("created", 1) == [b"o-1"]
    await broker.wait_until_idle(timeout=WAIT)
    assert (await check_readiness(broker)).ready
    await broker.disconnect()
    assert violations(server) == []


def example_configuration() -> str:
    """The page's nats-server configuration narrowed to the stream ORDERS."""
    text = SECURITY.read_text(encoding="utf-8")
    section = text[text.index(TABLE_HEADING) :]
    block = re.search(r"^```text\n(authorization \{.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert block, "the example configuration is gone from docs/security.md"
    return block.group(1)


async def test_the_example_configuration_runs_an_app_on_its_stream(
    start_server: Any, app_brokers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page's configuration as written; nats-server reads the password from the environment.
    monkeypatch.setenv("ORDERS_APP_PASSWORD", APP_PASSWORD)
    server = start_server(text=example_configuration())
    orders = StreamConfig(name="ORDERS", subjects=["orders.>"])
    broker = app_brokers(server, streams=[orders], auto_provision=False)
    await broker.connect()
    seen = Seen()

    async def created(msg: Message) -> bytes:
        if msg.body == b"poison" and not seen.bodies.get("fixed"):
            raise Reject("not an order")
        await seen.add("created", msg.body)
        return b"ok"

    await broker.subscribe("orders.created", created, queue="order-processor")
    ephemeral = await broker.subscribe("orders.audit", created)
    assert (await broker.request("orders.created", b"o-1", timeout=WAIT)).body == b"ok"
    await broker.publish("orders.created", b"poison")
    await broker.wait_until_idle(timeout=WAIT)
    [letter] = await broker.list_dead_letters()
    await seen.add("fixed", b"")
    await broker.replay_dead_letter(letter.seq)
    await broker.wait_until_idle(timeout=WAIT)
    await broker.publish("orders.audit", b"a-1")
    await broker.wait_until_idle(timeout=WAIT)
    assert sorted(seen.bodies["created"]) == [b"a-1", b"o-1", b"poison"]
    assert await broker.list_dead_letters() == []
    await ephemeral.unsubscribe()
    await broker.disconnect()
    assert violations(server) == []


async def test_the_app_user_cannot_touch_a_stream_it_does_not_own(start_server: Any) -> None:
    server = start_server(documented_grants())
    operator = await nats.connect(server.url, user=ADMIN, password=ADMIN_PASSWORD)
    app = await nats.connect(server.url, user=APP, password=APP_PASSWORD, error_cb=_ignore)
    try:
        jsm = operator.jsm()
        await jsm.add_stream(StreamConfig(name="LEDGER", subjects=["ledger.>"]))
        await operator.jetstream().publish("ledger.entries", b"1")
        refused = ("$JS.API.STREAM.DELETE.LEDGER", "$JS.API.STREAM.PURGE.LEDGER", "ledger.entries")
        for subject in refused:
            with pytest.raises(nats.errors.TimeoutError):  # the server drops it: nobody answers
                await app.request(subject, b"", timeout=0.3)
        await app.subscribe("ledger.>")

        async def everything_refused() -> None:
            logged = "\n".join(violations(server))  # only the app user has limits: each line is about it
            for subject in refused:
                assert f'Publish Violation - Subject "{subject}"' in logged, logged
            assert 'Subscription Violation - Subject "ledger.>"' in logged, logged

        await eventually(everything_refused)
        assert (await jsm.stream_info("LEDGER")).state.messages == 1
        assert app.is_connected  # refused, not disconnected
    finally:
        await app.close()
        await operator.close()


async def _ignore(error: Exception) -> None:
    """nats-py reports each permission violation to the error callback; the server's log is checked."""
