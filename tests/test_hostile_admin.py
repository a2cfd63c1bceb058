"""The admin surface against a hostile web page, a rebound DNS name and planted dead letters.

A page on another site can make the operator's browser send requests to the admin page (CSRF), frame it
(clickjacking) or, by pointing its own DNS name at 127.0.0.1, read it (DNS rebinding); a dead letter
planted by another NATS client carries terminal escape sequences to the operator's terminal. Over httpx
against the ASGI app (the page itself in a browser: test_admin_page), and the command-line tool as a
subprocess on a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI, Header, HTTPException

from jetstream_fastapi import Broker, InMemoryBroker, Message, admin_router
from jetstream_fastapi.core.deadletters import (
    CONSUMER,
    DEAD_LETTER_PREFIX,
    DEAD_LETTER_STREAM,
    ERROR,
    ERROR_TYPE,
    ORIGINAL_SEQUENCE,
    ORIGINAL_STREAM,
    ORIGINAL_SUBJECT,
    dead_letter_subject,
)
from jetstream_fastapi.integration.admin import ADMIN_HEADER, MAX_LIMIT, PREVIEW
from jetstream_fastapi.server import NatsServer
from tests.test_cli import cli

API = "/admin/jetstream/api"
SAME = {ADMIN_HEADER: "1"}
LOOPBACK = "http://127.0.0.1:8000"


@contextlib.asynccontextmanager
async def serve(app: FastAPI, base_url: str = LOOPBACK) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


async def plant(broker: Broker, body: bytes = b"{}", **extra: str) -> None:
    """A dead letter of ``orders.created`` as another client could store it."""
    headers = {
        ORIGINAL_SUBJECT: "orders.created",
        ORIGINAL_STREAM: "ORDERS",
        ORIGINAL_SEQUENCE: "1",
        CONSUMER: "processor",
        ERROR: "the database was down",
        **extra,
    }
    await broker.publish(dead_letter_subject("ORDERS", "processor"), body, headers=headers)


async def _ignore(message: Message) -> None:
    return None


def admin_app(broker: Broker, **options: Any) -> FastAPI:
    app = FastAPI()
    app.include_router(admin_router(broker=broker, **options))
    return app


@pytest.fixture
async def memory() -> AsyncIterator[InMemoryBroker]:
    broker = InMemoryBroker()
    async with broker:
        await broker.publish("orders.created", b"x")  # provisions ORDERS, which a replay needs
        await broker.subscribe("orders.created", _ignore, queue="processor")  # and the letters' consumer
        yield broker


# -- CSRF --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},  # a plain form post or a no-cors fetch cannot add a custom header
        {ADMIN_HEADER: "0"},
        {**SAME, "Origin": "https://evil.example"},
        {**SAME, "Origin": "null"},  # a sandboxed frame or a data: URL
        {**SAME, "Origin": "http://127.0.0.1:9999"},  # another local app is another origin
        {**SAME, "Sec-Fetch-Site": "cross-site"},
        {**SAME, "Sec-Fetch-Site": "same-site"},
        {**SAME, "Origin": LOOPBACK, "Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_cross_site_replay_and_purge_are_refused(memory: InMemoryBroker, headers: dict[str, str]) -> None:
    await plant(memory)
    [letter] = await memory.list_dead_letters()
    async with serve(admin_app(memory, insecure=True)) as client:
        replay = await client.post(f"{API}/dead-letters/{letter.seq}/replay", headers=headers)
        purge = await client.post(f"{API}/dead-letters/purge", json={"confirm": True}, headers=headers)
        for response in (replay, purge):
            assert response.status_code == 403, response.text
            assert "cross-site" in response.json()["detail"]
            assert response.headers["cache-control"] == "no-store"
    assert [d.seq for d in await memory.list_dead_letters()] == [letter.seq]  # nothing replayed or deleted


@pytest.mark.parametrize(
    "headers",
    [SAME, {**SAME, "Origin": LOOPBACK}, {**SAME, "Origin": LOOPBACK, "Sec-Fetch-Site": "same-origin"}],
)
async def test_same_origin_replay_and_purge_go_ahead(memory: InMemoryBroker, headers: dict[str, str]) -> None:
    await plant(memory)
    await plant(memory)
    first, second = await memory.list_dead_letters()
    async with serve(admin_app(memory, insecure=True)) as client:
        replay = await client.post(f"{API}/dead-letters/{first.seq}/replay", headers=headers)
        assert replay.status_code == 200, replay.text
        purge = await client.post(f"{API}/dead-letters/purge", json={"confirm": True}, headers=headers)
        assert purge.json()["purged"] == 1
    assert await memory.list_dead_letters() == []
    del second


async def test_csrf_defence_holds_behind_an_authentication_dependency(memory: InMemoryBroker) -> None:
    # A browser sends the operator's cookies or Basic credentials along with a cross-site post: the
    # authentication dependency passes, the CSRF check must not.
    def require_admin(authorization: str | None = Header(None)) -> None:
        if authorization != "Basic b3A6cHc=":
            raise HTTPException(401, "admins only")

    await plant(memory)
    app = admin_app(memory, dependencies=[Depends(require_admin)])
    auth = {"Authorization": "Basic b3A6cHc="}
    async with serve(app, base_url="https://admin.example.com") as client:
        evil = {**auth, **SAME, "Origin": "https://evil.example"}
        assert (await client.post(f"{API}/dead-letters/purge", json={"confirm": True}, headers=evil)).status_code == 403
        assert (await client.post(f"{API}/dead-letters/purge", json={"confirm": True}, headers=auth)).status_code == 403
        own = {**auth, **SAME, "Origin": "https://admin.example.com"}
        assert (await client.post(f"{API}/dead-letters/purge", json={"confirm": True}, headers=own)).status_code == 200


# -- DNS rebinding: insecure=True answers loopback names only ---------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example", "10.0.0.5:8000", ""],
)
async def test_insecure_admin_refuses_other_host_names(memory: InMemoryBroker, host: str) -> None:
    await plant(memory, b"a secret order")
    async with serve(admin_app(memory, insecure=True)) as client:
        for method, path in (
            ("GET", "/admin/jetstream"),
            ("GET", f"{API}/dead-letters"),
            ("GET", f"{API}/dead-letters/1"),
            ("GET", f"{API}/consumers"),
            ("POST", f"{API}/dead-letters/1/replay"),
        ):
            response = await client.request(method, path, headers={"Host": host, **SAME})
            assert response.status_code == 403, (method, path, response.text)
            assert "secret" not in response.text
            assert "loopback" in response.json()["detail"]
    assert len(await memory.list_dead_letters()) == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8000", "localhost", "LocalHost:1234", "[::1]", "[::1]:8000"])
async def test_insecure_admin_answers_loopback_host_names(memory: InMemoryBroker, host: str) -> None:
    async with serve(admin_app(memory, insecure=True)) as client:
        assert (await client.get("/admin/jetstream", headers={"Host": host})).status_code == 200
        assert (await client.get(f"{API}/dead-letters", headers={"Host": host})).status_code == 200


async def test_an_authenticated_admin_answers_any_host_name(memory: InMemoryBroker) -> None:
    app = admin_app(memory, dependencies=[Depends(lambda: None)])
    async with serve(app, base_url="https://admin.example.com") as client:
        assert (await client.get(f"{API}/dead-letters")).status_code == 200


# -- headers: no framing, no sniffing, no caching -------------------------------------------------------------


async def test_page_and_answers_forbid_framing_sniffing_and_caching(memory: InMemoryBroker) -> None:
    async with serve(admin_app(memory, insecure=True)) as client:
        page = await client.get("/admin/jetstream")
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp  # the page's own script and style by their hashes only
        assert "script-src 'sha256-" in csp and "style-src 'sha256-" in csp
        answers = [
            page,
            await client.get(f"{API}/dead-letters"),
            await client.get(f"{API}/consumers"),
            await client.get(f"{API}/dead-letters/12345"),  # 404
            await client.post(f"{API}/dead-letters/1/replay"),  # 403: no custom header
            await client.get("/admin/jetstream", headers={"Host": "evil.example"}),  # 403: not loopback
        ]
        for response in answers:
            assert response.headers["cache-control"] == "no-store", response.request.url
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


# -- bounded answers ----------------------------------------------------------------------------------------


async def test_lists_carry_previews_and_are_bounded(memory: InMemoryBroker) -> None:
    body = "é".encode() * 40_000  # two bytes a character: the cut must not split one
    await plant(memory, body, **{"X-Long": "v" * 5000})
    async with serve(admin_app(memory, insecure=True)) as client:
        [letter] = (await client.get(f"{API}/dead-letters")).json()["letters"]
        assert letter["truncated"] is True
        assert letter["body_size"] == len(body)
        assert len(letter["body"].encode()) <= PREVIEW
        assert letter["body"] == "é" * (PREVIEW // 2)
        assert len(letter["headers"]["X-Long"]) < 5000
        whole = (await client.get(f"{API}/dead-letters/{letter['seq']}")).json()
        assert whole["body"].encode() == body
        assert whole["headers"]["X-Long"] == "v" * 5000
        assert (await client.get(f"{API}/dead-letters", params={"limit": MAX_LIMIT + 1})).status_code == 422
        assert (await client.get(f"{API}/dead-letters", params={"limit": MAX_LIMIT})).status_code == 200


async def test_purge_of_every_letter_is_bounded_per_call(memory: InMemoryBroker) -> None:
    for _ in range(5):
        await plant(memory)
    async with serve(admin_app(memory, insecure=True)) as client:
        first = await client.post(f"{API}/dead-letters/purge", json={"confirm": True, "limit": 3}, headers=SAME)
        assert first.json() == {"purged": 3, "more": True}
        assert len(await memory.list_dead_letters()) == 2
        rest = await client.post(f"{API}/dead-letters/purge", json={"confirm": True, "limit": 3}, headers=SAME)
        assert rest.json() == {"purged": 2, "more": False}
        too_many = {"confirm": True, "limit": MAX_LIMIT * 10}
        assert (await client.post(f"{API}/dead-letters/purge", json=too_many, headers=SAME)).status_code == 422
        seqs = {"confirm": True, "seqs": list(range(1, MAX_LIMIT * 10))}
        assert (await client.post(f"{API}/dead-letters/purge", json=seqs, headers=SAME)).status_code == 422


# -- the command-line tool: what a dead letter says never drives the terminal -----------------------------------

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202egnp.exe\x7f\r\x08"
"""A title change (OSC), a screen clear (CSI), a C1 CSI, a bidi override, DEL, carriage return, backspace."""
IN_HEADER = HOSTILE.replace("\r", "")
"""The same in a header value, which cannot hold a carriage return (it would end the header line)."""


def _visible(text: str) -> None:
    for char in ("\x1b", "\x9b", "\u202e", "\x7f", "\r", "\x08", "\x07"):
        assert char not in text, (char, text)


async def test_cli_escapes_what_a_planted_dead_letter_says(fresh_server: NatsServer) -> None:
    # Another client plants a dead letter with hostile text in every field, with raw nats-py.
    nc = await nats.connect(fresh_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=DEAD_LETTER_STREAM, subjects=[f"{DEAD_LETTER_PREFIX}.>"])
        headers = {
            ORIGINAL_SUBJECT: "orders.created" + IN_HEADER,
            ORIGINAL_STREAM: "ORDERS",
            ORIGINAL_SEQUENCE: "1",
            CONSUMER: "processor",
            ERROR_TYPE: "Boom" + IN_HEADER,
            ERROR: "failed" + IN_HEADER,
            "X-Note": "value" + IN_HEADER,
        }
        body = ("body" + HOSTILE + "\nline two").encode()
        ack = await js.publish(dead_letter_subject("ORDERS", "processor"), body, headers=headers)
    finally:
        await nc.close()
    env = {"NATS_URL": fresh_server.url}

    def run(*args: str) -> str:
        result = cli(None, *args, env=env)
        assert result.returncode == 0, result.stderr
        _visible(result.stderr)
        return result.stdout

    for args in (
        ("dead-letters", "show", str(ack.seq)),
        ("dead-letters", "list"),
    ):
        text = await asyncio.to_thread(run, *args)
        _visible(text)
        assert "\\x1b]0;pwned" in text and "\\u202e" in text  # shown, escaped
    shown = await asyncio.to_thread(run, "dead-letters", "show", str(ack.seq))
    assert "line two" in shown  # the body keeps its line breaks
    as_json = json.loads(await asyncio.to_thread(run, "--json", "dead-letters", "show", str(ack.seq)))
    assert as_json["body"] == "body" + HOSTILE + "\nline two"  # JSON has it exactly
    assert as_json["error"] == "failed" + IN_HEADER

    # An error naming hostile text (a replay refused for its subject) reaches stderr escaped too.
    refused = await asyncio.to_thread(cli, None, "dead-letters", "replay", str(ack.seq), env=env)
    assert refused.returncode == 1
    _visible(refused.stderr)
    _visible(refused.stdout)  # the skipped letter's reason quotes its subject: escaped
    assert f"skipped {ack.seq}: " in refused.stdout and "\\x1b]0;pwned" in refused.stdout


async def test_cli_replay_of_every_letter_is_bounded_per_call(fresh_server: NatsServer) -> None:
    nc = await nats.connect(fresh_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=DEAD_LETTER_STREAM, subjects=[f"{DEAD_LETTER_PREFIX}.>"])
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        await js.add_consumer("ORDERS", durable_name="processor")  # a replay reaches the letter's consumer only
        for sequence in range(1, 4):
            headers = {ORIGINAL_SUBJECT: "orders.created", ORIGINAL_STREAM: "ORDERS", CONSUMER: "processor"}
            headers[ORIGINAL_SEQUENCE] = str(sequence)
            await js.publish(dead_letter_subject("ORDERS", "processor"), b"{}", headers=headers)
        env = {"NATS_URL": fresh_server.url}
        first = await asyncio.to_thread(
            cli, None, "--json", "dead-letters", "replay", "--all", "-n", "2", "--yes", env=env
        )
        assert first.returncode == 0, first.stderr
        assert len(json.loads(first.stdout)) == 2
        assert "more dead letters remain" in first.stderr
        rest = await asyncio.to_thread(
            cli, None, "--json", "dead-letters", "replay", "--all", "-n", "2", "--yes", env=env
        )
        assert len(json.loads(rest.stdout)) == 1
        assert "remain" not in rest.stderr
        too_many = await asyncio.to_thread(cli, None, "dead-letters", "replay", "--all", "-n", "1001", "--yes", env=env)
        assert too_many.returncode == 2
        assert (await js.stream_info("ORDERS")).state.messages == 3
    finally:
        await nc.close()
