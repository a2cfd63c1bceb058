"""The admin page in real headless Chromium (Debian's, driven by Playwright): replay by a click, bodies as text,
its own script allowed by its Content-Security-Policy, and a page of another site that can neither frame
it nor make the browser replay or purge.

The example app runs under uvicorn on a nats-server of this test's own. The browser comes from the system
packages (``.ci/run`` installs ``chromium``); without it the test fails in CI and skips only on a machine
without ``CI`` set. ``JSF_ADMIN_SCREENSHOT=path`` saves a screenshot of the page (the README's).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from example_app.app import ORDER_PROCESSOR, ORDERS_CREATED, create_app
from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.server import NatsServer
from tests.test_admin import bury

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EVIL = '<script>document.title="pwned";window.pwned=1</script><img src=x onerror="window.pwned=2">'

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium chromium-driver)")
    pytest.skip("no Chromium on this machine (apt-get install chromium); CI never skips", allow_module_level=True)


@contextlib.contextmanager
def served(url: str, app: Any = None) -> Iterator[str]:
    """``app`` (default: the example app on ``url``'s server) under uvicorn in a thread; yields its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = app if app is not None else create_app(JetStreamBroker(url))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:  # uvicorn sets it once the lifespan ran and the socket listens
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


async def _dead_letters(url: str) -> None:
    async with JetStreamBroker(url) as broker:
        await broker.publish(ORDERS_CREATED, EVIL)  # not an Order: the consumer dead-letters it
        await bury(broker, json.dumps({"id": "o-replayed", "item": "lamp", "quantity": 2}).encode())
        for _ in range(300):  # bounded: the consumer runs in the app's thread
            if len(await broker.list_dead_letters()) == 3:  # the invalid one of each consumer, the buried one
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"dead letters: {await broker.list_dead_letters()}")


def test_replay_by_click_and_bodies_shown_as_text(fresh_server: NatsServer) -> None:
    from playwright.sync_api import sync_playwright

    with served(fresh_server.url) as base:
        asyncio.run(_dead_letters(fresh_server.url))  # before Playwright's sync API runs a loop of its own
        with sync_playwright() as playwright:
            _check_page(playwright, base)


def test_another_site_can_neither_frame_the_page_nor_replay(fresh_server: NatsServer) -> None:
    from playwright.sync_api import sync_playwright

    with served(fresh_server.url) as base:
        asyncio.run(_dead_letters(fresh_server.url))
        with sync_playwright() as playwright:
            _check_hostile_site(playwright, base)
        # Nothing was replayed or purged.
        assert len(httpx.get(f"{base}/admin/jetstream/api/dead-letters").json()["letters"]) == 3


@contextlib.contextmanager
def hostile_site(html: str) -> Iterator[str]:
    """A page of another site, served on loopback (Chromium's local network access checks would block a
    public site before our defences are reached; a site on this machine, or a rebound DNS name, is not
    blocked). Yields its URL, ``http://localhost:PORT/``: another site than ``127.0.0.1``."""
    body = html.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://localhost:{httpd.server_address[1]}/"
        finally:
            httpd.shutdown()
            thread.join(10)


def _check_hostile_site(playwright: Any, base: str) -> None:
    """A page on another site frames the admin page, posts a form to it and fetches it."""
    seqs = [d["seq"] for d in httpx.get(f"{base}/admin/jetstream/api/dead-letters").json()["letters"]]
    replay = f"{base}/admin/jetstream/api/dead-letters/{seqs[0]}/replay"
    evil = f"""<!doctype html><title>evil</title>
<iframe id="framed" src="{base}/admin/jetstream"></iframe>
<form id="form" method="post" action="{replay}" target="sink"></form><iframe name="sink"></iframe>
<script>
window.results = [];
async function attack() {{
  for (const mode of ["no-cors", "cors"]) {{
    try {{
      const r = await fetch("{base}/admin/jetstream/api/dead-letters/purge", {{
        method: "POST", mode, credentials: "include",
        headers: {{"X-JetStream-Admin": "1", "Content-Type": "text/plain"}}, body: '{{"confirm": true}}'}});
      window.results.push(mode + ":" + r.type + ":" + r.status);
    }} catch (e) {{ window.results.push(mode + ":refused"); }}
  }}
  document.getElementById("form").submit();
}}
</script>"""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    try:
        _attack(browser.new_page(), evil, replay)
    finally:
        browser.close()


def _attack(page: Any, evil: str, replay: str) -> None:
    with hostile_site(evil) as site:
        refusals: list[str] = []
        page.on("console", lambda message: refusals.append(message.text))
        page.goto(site)
        page.wait_for_load_state("load")
        with page.expect_response(lambda response: response.url == replay) as form_post:
            page.evaluate("attack()")
            page.wait_for_function("window.results.length === 2")
        # The framed admin page was not displayed: its frame holds Chromium's error page, not the page.
        framed = [frame for frame in page.frames if frame.name != "sink" and frame != page.main_frame]
        assert framed and not any(_rendered(frame) for frame in framed)
        assert any("frame-ancestors" in text or "X-Frame-Options" in text for text in refusals), refusals
        results = page.evaluate("window.results")
        # no-cors: the browser drops the custom header, the server refuses (an opaque answer the page cannot
        # read); cors: the preflight finds no CORS answer, the browser never sends the post.
        assert results[0] == "no-cors:opaque:0" and results[1] == "cors:refused", results
        assert form_post.value.status == 403  # the form post: no custom header


def _rendered(frame: Any) -> bool:
    try:
        return bool(frame.locator("#consumers").count())
    except Exception:
        return False


def _check_page(playwright: Any, base: str) -> None:
    from playwright.sync_api import expect

    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        dialogs: list[str] = []

        def accept(dialog: Any) -> None:
            dialogs.append(dialog.message)
            dialog.accept()

        page.on("dialog", accept)
        # The page's own script and style run under its policy (by their hashes): nothing is refused.
        refused: list[str] = []
        page.on("console", lambda message: refused.append(message.text) if "Content Security" in message.text else None)
        posts: list[dict[str, str]] = []
        page.on("request", lambda request: posts.append(request.headers) if request.method == "POST" else None)
        page.goto(f"{base}/admin/jetstream")
        expect(page.locator("#consumers tbody tr")).to_have_count(2)  # the processor and billing
        expect(page.locator(f"#consumers tbody tr[data-consumer='{ORDER_PROCESSOR}'] td").nth(1)).to_have_text(
            ORDER_PROCESSOR
        )
        expect(page.locator("#outbox-summary")).to_contain_text("Backlog 0")  # the example app's outbox
        rows = page.locator("#dead-letters tbody tr")
        expect(rows).to_have_count(3)

        # The untrusted body is shown as text: no script ran, no element was made from it.
        evil = page.locator("#dead-letters tbody tr", has_text="<script>").filter(has_text=ORDER_PROCESSOR)
        expect(evil.locator("pre").first).to_have_text(EVIL)
        assert page.evaluate("window.pwned") is None
        assert page.title() == "JetStream admin"
        assert page.locator("#dead-letters img").count() == 0

        if os.environ.get("JSF_ADMIN_SCREENSHOT"):
            page.screenshot(path=os.environ["JSF_ADMIN_SCREENSHOT"], full_page=True)

        buried = page.locator("#dead-letters tbody tr", has_text="o-replayed")
        buried.locator("button.replay").click()
        expect(page.locator("#status")).to_contain_text("Replayed dead letter")
        assert dialogs and dialogs[0].startswith("Replay dead letter")
        expect(rows).to_have_count(2)
        deadline = time.monotonic() + 20
        while httpx.get(f"{base}/orders/o-replayed").status_code != 200:  # the consumer processed it
            assert time.monotonic() < deadline, "the replayed order was not processed"
            time.sleep(0.05)
        assert httpx.get(f"{base}/orders/o-replayed").json()["status"] == "processed"

        evil.locator("button.purge").click()
        expect(page.locator("#status")).to_contain_text("Purged 1 dead letter")
        expect(rows).to_have_count(1)  # billing's own dead letter of the invalid order
        assert len(posts) == 2 and all(headers.get("x-jetstream-admin") == "1" for headers in posts), posts
        assert refused == []
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(250, 251, 252)"  # the inline style applied
    finally:
        browser.close()


async def _letters_replay_refuses(url: str) -> dict[str, int]:
    """Four dead letters of the example app's consumer: malformed, partial, foreign (a subject no stream
    captures for it) and one whose replay was stored before (a duplicate); their sequences by name."""
    from jetstream_fastapi.core.dead_letters import (
        CONSUMER,
        ORIGINAL_SEQUENCE,
        ORIGINAL_SIZE,
        ORIGINAL_STREAM,
        ORIGINAL_SUBJECT,
        TRUNCATED,
        dead_letter_subject,
    )

    subject = dead_letter_subject("ORDERS", ORDER_PROCESSOR)
    whole = {ORIGINAL_SUBJECT: ORDERS_CREATED, ORIGINAL_STREAM: "ORDERS", ORIGINAL_SEQUENCE: "1"}
    whole[CONSUMER] = ORDER_PROCESSOR
    order = json.dumps({"id": "o-dup", "item": "lamp", "quantity": 1}).encode()
    planted = {
        "malformed": (b"{}", {**whole, ORIGINAL_SEQUENCE: "many"}),
        "partial": (b"{", {**whole, TRUNCATED: "body", ORIGINAL_SIZE: "9000"}),
        "foreign": (b"{}", {**whole, ORIGINAL_SUBJECT: "$JS.API.STREAM.DELETE.ORDERS"}),
        "duplicate": (order, whole),
    }
    async with JetStreamBroker(url) as broker:
        seqs = {
            name: (await broker.publish(subject, body, headers=headers)).seq
            for name, (body, headers) in planted.items()
        }
        letter = await broker.dead_letter(seqs["duplicate"])
        await broker.publish(ORDERS_CREATED, order, msg_id=letter.replay_msg_id)  # its replay, stored before
    return seqs


def test_refused_and_duplicate_replays_and_flagged_letters_on_the_page(fresh_server: NatsServer) -> None:
    from playwright.sync_api import expect, sync_playwright

    with served(fresh_server.url) as base:
        seqs = asyncio.run(_letters_replay_refuses(fresh_server.url))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.on("dialog", lambda dialog: dialog.accept())
                page.goto(f"{base}/admin/jetstream?limit=3")  # a page of 3: the fourth is on the next page
                rows = page.locator("#dead-letters tbody tr")
                expect(rows).to_have_count(3)

                def row(name: str) -> Any:
                    return page.locator(f'#dead-letters tbody tr[data-seq="{seqs[name]}"]')

                # Flags, and no replay for what replay refuses anyway.
                expect(row("malformed").locator(".flag")).to_have_text("malformed")
                malformed = row("malformed").locator(".flag")
                expect(malformed).to_have_attribute("title", re.compile("Dlq-Original-Sequence"))
                expect(row("malformed").locator("button.replay")).to_be_disabled()
                expect(row("partial").locator(".flag")).to_have_text("partial")
                expect(row("partial").locator("button.replay")).to_be_disabled()
                expect(row("foreign").locator(".flag")).to_have_count(0)

                # A refused replay: its own status (422) and the reason; the letter stays.
                row("foreign").locator("button.replay").click()
                status = page.locator("#status")
                expect(status).to_contain_text("Replay failed: 422")
                expect(status).to_contain_text("is not one messages are published to")
                expect(row("foreign")).to_have_count(1)

                # The next page has the fourth; a replay answered duplicate says the letter was kept.
                page.locator("#next-page").click()
                expect(rows).to_have_count(1)
                row("duplicate").locator("button.replay").click()
                expect(status).to_contain_text("kept (duplicate)")
                expect(row("duplicate")).to_have_count(1)
                page.locator("#first-page").click()
                expect(rows).to_have_count(3)
            finally:
                browser.close()
        letters = httpx.get(f"{base}/admin/jetstream/api/dead-letters").json()["letters"]
        assert sorted(d["seq"] for d in letters) == sorted(seqs.values())  # nothing replayed, nothing lost


async def _failed_outbox_row(outbox: Any) -> int:
    """A row as a relay leaves one it could neither publish nor dead-letter, with a hostile key and error."""
    from sqlalchemy import update
    from sqlalchemy.ext.asyncio import AsyncSession

    await outbox.create_tables()
    async with AsyncSession(outbox.engine) as session, session.begin():
        await outbox.publish(session, "shop.created", "the order", key=EVIL)
    table = outbox.tables.messages
    async with outbox.engine.begin() as connection:
        await connection.execute(update(table).values(failed=f"Refused: {EVIL}"))
    [row] = await outbox.stuck()
    await outbox.engine.dispose()  # the app's loop opens its own connections
    return int(row.id)


def test_the_outbox_section_retries_a_failed_row_by_click(fresh_server: NatsServer, tmp_path: Any) -> None:
    from fastapi import FastAPI
    from playwright.sync_api import expect, sync_playwright
    from sqlalchemy.ext.asyncio import create_async_engine

    from jetstream_fastapi import ConsumerRouter, admin_router, jetstream_lifespan
    from jetstream_fastapi.outbox import Outbox

    outbox = Outbox(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"), poll_interval=0.2, lease_ttl=1)
    row_id = asyncio.run(_failed_outbox_row(outbox))
    published = threading.Event()
    router = ConsumerRouter()

    @router.handle("shop.created", queue="shop")
    async def shop(message: Message) -> None:
        published.set()

    app = FastAPI(lifespan=jetstream_lifespan(JetStreamBroker(fresh_server.url), router, outbox=outbox))
    app.include_router(admin_router(insecure=True))
    with served(fresh_server.url, app) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
            page.goto(f"{base}/admin/jetstream")
            summary = page.locator("#outbox-summary")
            expect(summary).to_contain_text("Backlog 0")
            expect(summary).to_contain_text("failed 1")
            row = page.locator(f"#outbox tbody tr[data-id='{row_id}']")
            expect(row.locator("td").nth(2)).to_have_text(EVIL)  # the key, as text
            expect(row.locator("td").nth(5)).to_have_text(f"Refused: {EVIL}")
            assert page.evaluate("window.pwned") is None
            assert page.locator("#outbox img").count() == 0
            assert not published.is_set()
            row.locator("button.retry").click()
            expect(page.locator("#status")).to_contain_text("Retried 1 outbox row.")
            assert dialogs == [f"Publish outbox row {row_id} (shop.created) again?"]
            assert published.wait(20), "the relay did not publish the retried row"
            expect(page.locator("#outbox tbody")).to_contain_text("Nothing waits for long.")  # the next refresh
            expect(summary).to_contain_text("failed 0")
        finally:
            browser.close()
