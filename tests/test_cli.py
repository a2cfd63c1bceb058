"""The command-line tool, as a subprocess against a real nats-server: tables, ``--json``, exit codes, no traceback."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.manager import JetStreamManager

from jetstream_fastapi import JetStreamBroker, Message, Reject
from jetstream_fastapi.server import NatsServer

TOKEN = "cli-s3cret"


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    """A server of this module's own, with a token, so that ``streams`` sees only this module's streams."""
    with NatsServer(args=["--auth", TOKEN]) as server:
        yield server


def cli(server: NatsServer | None, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m jetstream_fastapi ARGS`` with no terminal on stdin; NATS_URL/NATS_TOKEN for ``server``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    if server is not None:
        environment.update(NATS_URL=server.url, NATS_TOKEN=TOKEN)
    environment.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "jetstream_fastapi", *args],
        capture_output=True,
        text=True,
        env=environment,
        stdin=subprocess.DEVNULL,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.lstrip().startswith(("[", "{")) else result.stdout


class Healing:
    """A handler that rejects every message until healed, then records what it handles."""

    def __init__(self) -> None:
        self.healed = False
        self.handled: list[bytes] = []
        self.changed = asyncio.Event()

    async def __call__(self, msg: Message) -> None:
        if not self.healed:
            raise Reject(f"cannot parse {msg.body[:10]!r}")
        self.handled.append(msg.body)
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(20):
            while len(self.handled) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def js(server: NatsServer) -> AsyncIterator[JetStreamBroker]:
    """A broker on the module's server (not named ``broker``: the testing kit parametrizes that name)."""
    broker = JetStreamBroker(server.url, token=TOKEN, fetch_wait=1.0)
    async with broker:
        yield broker


@pytest.fixture
async def admin(js: JetStreamBroker) -> JetStreamManager:
    return js.inspector()._backend.manager()


async def test_streams_and_consumers(js: JetStreamBroker, prefix: str) -> None:
    broker = js

    async def handler(msg: Message) -> None: ...

    sub = await broker.subscribe(f"{prefix}.lag", handler, queue="lagging", concurrency=3, batch_size=7)
    await sub.unsubscribe()  # the durable stays; what is published now waits: lag
    for _ in range(4):
        ack = await broker.publish(f"{prefix}.lag", b"x")
    stream = ack.stream

    streams = await asyncio.to_thread(lambda: ok(cli(None, "--json", "streams", env=_env(broker))))
    [mine] = [s for s in streams if s["name"] == stream]
    assert (mine["messages"], mine["consumers"], mine["subjects"]) == (4, 1, [prefix, f"{prefix}.>"])

    table = await asyncio.to_thread(lambda: ok(cli(None, "streams", env=_env(broker))))
    assert table.splitlines()[0].split()[:3] == ["NAME", "SUBJECTS", "MESSAGES"]
    assert stream in table

    [consumer] = await asyncio.to_thread(lambda: ok(cli(None, "--json", "consumers", stream, env=_env(broker))))
    assert consumer["consumer"] == "lagging"
    figures = (consumer["pending"], consumer["ack_pending"], consumer["redelivered"], consumer["paused"])
    assert figures == (4, 0, 0, False)
    assert consumer["durable"] is True
    assert consumer["filter_subject"] == f"{prefix}.lag"
    assert (consumer["max_deliver"], consumer["options"]["concurrency"], consumer["options"]["batch_size"]) == (5, 3, 7)

    every = await asyncio.to_thread(lambda: ok(cli(None, "consumers", "--json", env=_env(broker))))  # either place
    assert any(c["consumer"] == "lagging" and c["stream"] == stream for c in every)
    table = await asyncio.to_thread(lambda: ok(cli(None, "consumers", stream, env=_env(broker))))
    assert "lagging" in table
    assert "concurrency=3" in table


async def test_dead_letters_list_show_replay_purge(js: JetStreamBroker, prefix: str) -> None:
    broker = js
    handler = Healing()
    await broker.subscribe(f"{prefix}.orders", handler, queue="dl")
    bodies = [b"<script>alert(1)</script>\nline two", b"second", b"third", b"fourth"]
    for body in bodies:
        ack = await broker.publish(f"{prefix}.orders", body)
    await broker.wait_until_idle()
    stream, env = ack.stream, _env(broker)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(None, *args, env=env)

    letters = await asyncio.to_thread(lambda: ok(run("--json", "dead-letters", "list", "--stream", stream)))
    assert [d["body"].encode() for d in letters] == bodies
    seqs = [d["seq"] for d in letters]
    assert letters[0]["error_type"] == "Reject"
    assert letters[0]["consumer"] == "dl"

    table = await asyncio.to_thread(lambda: ok(run("dead-letters", "list", "--consumer", "dl", "--stream", stream)))
    assert "<script>alert(1)</script>\\nline two" in table  # one line per dead letter, the newline escaped
    shown = await asyncio.to_thread(lambda: ok(run("--json", "dead-letters", "show", str(seqs[1]))))
    assert (shown["body"], shown["subject"]) == ("second", f"{prefix}.orders")
    text = await asyncio.to_thread(lambda: ok(run("dead-letters", "show", str(seqs[1]))))
    assert "error: Reject: cannot parse b'second'" in text

    missing = await asyncio.to_thread(lambda: run("dead-letters", "show", "987654"))
    assert missing.returncode == 1
    assert "no dead letter with sequence 987654" in missing.stderr

    # Destructive without --yes and without a terminal: refused, nothing deleted.
    refused = await asyncio.to_thread(lambda: run("dead-letters", "purge", str(seqs[3])))
    assert refused.returncode == 2
    assert "pass --yes" in refused.stderr
    assert len(await broker.list_dead_letters(100, stream=stream)) == 4
    purged = await asyncio.to_thread(lambda: ok(run("--json", "dead-letters", "purge", str(seqs[3]), "--yes")))
    assert purged == {"purged": 1}

    handler.healed = True
    replayed = await asyncio.to_thread(lambda: ok(run("--json", "dead-letters", "replay", str(seqs[0]))))
    assert [r["seq"] for r in replayed] == [seqs[0]]
    await handler.wait_for(1)
    assert handler.handled == [bodies[0]]

    unknown = await asyncio.to_thread(lambda: run("dead-letters", "replay", str(seqs[1]), "987654"))
    assert unknown.returncode == 1
    assert "987654" in unknown.stderr
    assert len(await broker.list_dead_letters(100, stream=stream)) == 2  # checked before any was replayed

    refused = await asyncio.to_thread(lambda: run("dead-letters", "replay", "--all", "--consumer", "dl"))
    assert refused.returncode == 2
    usage = await asyncio.to_thread(lambda: run("dead-letters", "replay", "3", "--all"))
    assert usage.returncode == 2
    assert "not both" in usage.stderr
    text = await asyncio.to_thread(
        lambda: ok(run("dead-letters", "replay", "--all", "--consumer", "dl", "--stream", stream, "--yes"))
    )
    assert text.count("replayed") == 2
    await handler.wait_for(3)
    assert sorted(handler.handled) == sorted(bodies[:3])
    assert await broker.list_dead_letters(100, stream=stream) == []


async def test_replay_of_a_dead_letter_whose_stream_is_gone(
    js: JetStreamBroker, admin: JetStreamManager, prefix: str
) -> None:
    broker = js
    handler = Healing()
    sub = await broker.subscribe(f"{prefix}.gone", handler, queue="gone")
    ack = await broker.publish(f"{prefix}.gone", b"lost")
    await broker.wait_until_idle()
    await sub.unsubscribe()
    [letter] = await broker.list_dead_letters(10, stream=ack.stream)
    await admin.delete_stream(ack.stream)
    result = await asyncio.to_thread(lambda: cli(None, "dead-letters", "replay", str(letter.seq), env=_env(broker)))
    assert result.returncode == 1
    assert f"skipped {letter.seq}: " in result.stdout  # the letter is kept, and the reason said
    assert f"came from stream '{ack.stream}', which no longer exists" in result.stdout
    assert "1 dead letter skipped" in result.stderr
    purge = await asyncio.to_thread(
        lambda: cli(None, "dead-letters", "purge", "--all", "--stream", ack.stream, "--yes", env=_env(broker))
    )
    assert purge.stdout.strip() == "purged 1 dead letter"


async def test_schedules_list_and_remove(js: JetStreamBroker, prefix: str) -> None:
    await js.declare_schedule(f"{prefix}.reports", cron="0 6 * * *", timezone="Europe/Berlin", name="morning")
    stream = prefix.upper()
    [listed] = await asyncio.to_thread(lambda: ok(cli(None, "--json", "schedules", "list", stream, env=_env(js))))
    assert (listed["name"], listed["subject"], listed["schedule"], listed["timezone"]) == (
        "morning",
        f"{prefix}.reports",
        "0 0 6 * * *",
        "Europe/Berlin",
    )
    table = await asyncio.to_thread(lambda: ok(cli(None, "schedules", "list", env=_env(js))))
    assert "morning" in table and "Europe/Berlin" in table
    refused = await asyncio.to_thread(lambda: cli(None, "schedules", "remove", f"{prefix}.reports", env=_env(js)))
    assert refused.returncode == 2 and "--yes" in refused.stderr  # no terminal to confirm on
    removed = await asyncio.to_thread(
        lambda: ok(cli(None, "schedules", "remove", f"{prefix}.reports", "--name", "morning", "-y", env=_env(js)))
    )
    assert "removed schedule morning" in removed
    assert await js.schedules(stream) == []
    again = await asyncio.to_thread(
        lambda: cli(None, "schedules", "remove", f"{prefix}.reports", "--name", "morning", "-y", env=_env(js))
    )
    assert again.returncode == 1 and "no recurring schedule" in again.stderr


def test_unknown_stream_unreachable_server_and_bad_credentials(server: NatsServer) -> None:
    unknown = cli(server, "consumers", "NO_SUCH_STREAM")
    assert unknown.returncode == 1
    assert "no stream named 'NO_SUCH_STREAM'" in unknown.stderr

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket is closed
    down = cli(None, "--server", f"nats://127.0.0.1:{port}", "--timeout", "1", "streams")
    assert down.returncode == 1
    assert f"could not connect to NATS at nats://127.0.0.1:{port}" in down.stderr
    assert down.stderr.count("\n") == 1  # one line: no log lines, no traceback

    refused = cli(server, "streams", env={"NATS_TOKEN": "wrong"})
    assert refused.returncode == 1
    assert "authorization" in refused.stderr.lower()
    assert "wrong" not in refused.stderr

    bad_url = cli(None, "--server", "http://127.0.0.1:4222", "streams")
    assert bad_url.returncode == 1
    assert "nats://" in bad_url.stderr


def test_asyncapi_export(tmp_path: Path) -> None:
    document = ok(cli(None, "asyncapi", "example_app.app:create_app"))
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "Orders"
    from_router = ok(cli(None, "asyncapi", "example_app.app:consumer_router", "-o", str(tmp_path / "doc.json")))
    assert from_router == ""
    assert json.loads((tmp_path / "doc.json").read_text())["channels"] == document["channels"]
    usage = cli(None, "asyncapi", "example_app")
    assert usage.returncode == 2
    assert "module:attribute" in usage.stderr
    missing = cli(None, "asyncapi", "example_app.app:nothing")
    assert missing.returncode == 1
    assert "has no attribute 'nothing'" in missing.stderr
    not_app = cli(None, "asyncapi", "example_app.app:ORDERS_CREATED")
    assert not_app.returncode == 1
    assert "nothing to document" in not_app.stderr


def test_console_script_and_lazy_imports() -> None:
    script = shutil.which("jetstream-fastapi", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script is installed with the package"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, check=True)
    assert "dead-letters" in result.stdout
    modules = "('nats', 'fastapi', 'pydantic', 'sqlalchemy')"
    code = f"import sys, jetstream_fastapi.cli; print([m for m in {modules} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]"


def _env(broker: JetStreamBroker) -> dict[str, str]:
    return {"NATS_URL": broker.servers[0], "NATS_TOKEN": TOKEN}


def test_a_server_that_does_not_answer(fresh_server: NatsServer) -> None:
    fresh_server.pause()  # SIGSTOP: the port accepts connections, nothing answers
    try:
        result = cli(None, "--server", fresh_server.url, "--timeout", "1", "streams")
    finally:
        fresh_server.resume()
    assert result.returncode == 1
    assert f"could not connect to NATS at {fresh_server.url}" in result.stderr
    assert result.stderr.count("\n") == 1
    assert ok(cli(None, "--server", fresh_server.url, "--json", "streams")) == []


async def _plant(broker: JetStreamBroker, prefix: str, stream: str, **changes: str) -> int:
    """A dead letter of ``<prefix>.orders`` for consumer ``dl``, with header ``changes`` (``""`` removes one)."""
    from jetstream_fastapi.core.dead_letters import CONSUMER, ORIGINAL_SEQUENCE, ORIGINAL_STREAM, ORIGINAL_SUBJECT

    headers = {ORIGINAL_SUBJECT: f"{prefix}.orders", ORIGINAL_STREAM: stream, ORIGINAL_SEQUENCE: "1", CONSUMER: "dl"}
    headers = {k: v for k, v in {**headers, **changes}.items() if v}
    return (await broker.publish(f"deadletter.{stream}.dl", b"planted", headers=headers)).seq


async def test_replay_skips_refused_letters_says_why_and_fails(js: JetStreamBroker, prefix: str) -> None:
    broker = js
    handler = Healing()
    await broker.subscribe(f"{prefix}.orders", handler, queue="dl")
    bodies = [b"first", b"second", b"third"]
    for body in bodies:
        ack = await broker.publish(f"{prefix}.orders", body)
    await broker.wait_until_idle()
    stream, env = ack.stream, _env(broker)
    good = [d.seq for d in await broker.list_dead_letters(10, stream=stream)]
    malformed = await _plant(broker, prefix, stream, **{"Dlq-Original-Sequence": "many"})
    partial = await _plant(broker, prefix, stream, **{"Dlq-Truncated": "body", "Dlq-Original-Size": "9000"})
    foreign = await _plant(broker, prefix, stream, **{"Dlq-Original-Subject": "$JS.API.STREAM.DELETE.VICTIM"})
    last = await _plant(broker, prefix, stream)  # a good one after the refused ones
    # The replay of the first good letter was stored before (a replay whose deletion was lost, say).
    duplicate = good[0]
    handler.healed = True
    await broker.publish(f"{prefix}.orders", b"first", msg_id=(await broker.dead_letter(duplicate)).replay_msg_id)
    await handler.wait_for(1)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(None, *args, env=env)

    every = ("dead-letters", "replay", "--all", "--stream", stream, "--yes")
    result = await asyncio.to_thread(lambda: run("--json", *every))
    assert result.returncode == 1, result.stderr
    outcomes = {r["seq"]: r for r in json.loads(result.stdout)}
    assert list(outcomes) == [*good, malformed, partial, foreign, last]  # every one, in order: none stopped it
    assert outcomes[duplicate] | {"stream_seq": 0} == {
        "seq": duplicate,
        "outcome": "kept",
        "stream": stream,
        "stream_seq": 0,
        "duplicate": True,
        "reason": "replayed before (duplicate): nothing stored, the letter is kept",
    }
    assert [outcomes[s]["outcome"] for s in (*good[1:], last)] == ["replayed"] * 3
    for seq, why in ((malformed, "it is malformed"), (partial, "it is truncated"), (foreign, "is not one messages")):
        assert outcomes[seq]["outcome"] == "skipped" and outcomes[seq]["stream_seq"] is None
        assert why in outcomes[seq]["reason"] and f"dead letter {seq} cannot be replayed" in outcomes[seq]["reason"]
    assert "3 dead letters skipped" in result.stderr
    await handler.wait_for(4)
    assert sorted(handler.handled) == sorted([b"first", b"second", b"third", b"planted"])
    left = [d.seq for d in await broker.list_dead_letters(10, stream=stream)]
    assert left == [duplicate, malformed, partial, foreign]  # kept: the duplicate and the skipped ones

    # As text: one line each, the duplicate "kept (duplicate)", the reasons; and `replay N` of a refused one.
    text = await asyncio.to_thread(lambda: run(*every))
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"kept (duplicate) {duplicate}")
    assert lines[1].startswith(f"skipped {malformed}: dead letter {malformed} cannot be replayed: it is malformed")
    assert len(lines) == 4
    single = await asyncio.to_thread(lambda: run("dead-letters", "replay", str(partial)))
    assert single.returncode == 1
    assert f"skipped {partial}: dead letter {partial} cannot be replayed: it is truncated" in single.stdout
    assert "1 dead letter skipped" in single.stderr
    # --after passes what was skipped; a list page says where the next one starts.
    after = await asyncio.to_thread(lambda: run("--json", *every, "--after", str(foreign)))
    assert (after.returncode, json.loads(after.stdout)) == (0, [])
    page = await asyncio.to_thread(lambda: run("--json", "dead-letters", "list", "--stream", stream, "-n", "2"))
    assert [d["seq"] for d in json.loads(page.stdout)] == [duplicate, malformed]
    assert f"--after {malformed}" in page.stderr
    rest = await asyncio.to_thread(
        lambda: run("--json", "dead-letters", "list", "--stream", stream, "-n", "2", "--after", str(malformed))
    )
    assert [d["seq"] for d in json.loads(rest.stdout)] == [partial, foreign]
    await broker.purge_dead_letters(stream=stream)
