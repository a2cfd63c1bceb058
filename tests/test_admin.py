"""The admin router's JSON endpoints and page, over httpx, on both brokers (the page in a browser: test_admin_page)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI, Header, HTTPException

from example_app.app import ORDER_PROCESSOR, ORDERS_CREATED, create_app
from jetstream_fastapi import Broker, InvalidArgumentError, JetStreamBroker, admin_router
from jetstream_fastapi.core.dead_letters import (
    CONSUMER,
    ERROR,
    ORIGINAL_SEQUENCE,
    ORIGINAL_STREAM,
    ORIGINAL_SUBJECT,
    dead_letter_subject,
)
from jetstream_fastapi.integration.admin import ADMIN_HEADER, PREVIEW

API = "/admin/jetstream/api"
ORDER = {"id": "o-1", "item": "book", "quantity": 1}


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        # A loopback name (insecure=True answers no other) and the header the page sends with every call.
        headers = {ADMIN_HEADER: "1"}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000", headers=headers) as client:
            yield client


async def bury(broker: Broker, body: bytes, *, stream: str = "ORDERS") -> None:
    """Store a dead letter of ``orders.created`` as if the consumer had given up on it."""
    headers = {
        ORIGINAL_SUBJECT: ORDERS_CREATED,
        ORIGINAL_STREAM: stream,
        ORIGINAL_SEQUENCE: "1",
        CONSUMER: ORDER_PROCESSOR,
        ERROR: "the database was down",
        "X-Trace": "t-1",
    }
    await broker.publish(dead_letter_subject(stream, ORDER_PROCESSOR), body, headers=headers)


def test_admin_router_needs_a_decision_about_authentication() -> None:
    with pytest.raises(InvalidArgumentError, match=r"dependencies=\[Depends\(require_admin\)\]"):
        admin_router()
    with pytest.raises(InvalidArgumentError):
        admin_router(insecure="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="prefix"):
        admin_router(insecure=True, prefix="admin/")


async def test_dependencies_guard_the_page_and_the_api(broker: Broker) -> None:
    def require_admin(x_admin: str | None = Header(None)) -> None:
        if x_admin != "yes":
            raise HTTPException(401, "admins only")

    app = FastAPI()
    app.include_router(admin_router(dependencies=[Depends(require_admin)], broker=broker))
    async with broker, serve(app) as client:
        for path in ("/admin/jetstream", f"{API}/consumers", f"{API}/dead-letters"):
            assert (await client.get(path)).status_code == 401
            assert (await client.get(path, headers={"X-Admin": "yes"})).status_code == 200


async def test_consumers_and_dead_letters(broker: Any) -> None:
    app = create_app(broker)  # includes admin_router(insecure=True)
    async with serve(app) as client:
        page = await client.get("/admin/jetstream")
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "textContent" in page.text

        consumers = (await client.get(f"{API}/consumers")).json()
        assert sorted(c["consumer"] for c in consumers) == ["billing", ORDER_PROCESSOR]
        [consumer] = [c for c in consumers if c["consumer"] == ORDER_PROCESSOR]
        names = (consumer["consumer"], consumer["subject"], consumer["stream"])
        assert names == (ORDER_PROCESSOR, ORDERS_CREATED, "ORDERS")
        assert (consumer["pending"], consumer["ack_pending"], consumer["paused"]) == (0, 0, False)
        assert consumer["options"]["max_deliver"] == 5

        poison = b"<script>alert(1)</script>" + b"x" * (PREVIEW + 100)
        await broker.publish(ORDERS_CREATED, poison)  # not an Order: dead-lettered with its validation error
        await bury(broker, json.dumps(ORDER).encode())
        await broker.wait_until_idle()
        every = (await client.get(f"{API}/dead-letters")).json()["letters"]
        assert len(every) == 3  # the invalid order, once per consumer of the subject, and the buried one
        [billing] = [d for d in every if d["consumer"] == "billing"]
        letters = [d for d in every if d["consumer"] == ORDER_PROCESSOR]
        invalid, buried = sorted(letters, key=lambda d: d["error"] != "the database was down")[::-1]
        assert invalid["error_type"] == "Reject"
        assert "invalid payload" in invalid["error"]
        assert invalid["truncated"] is True
        assert invalid["body_size"] == len(poison)
        assert invalid["body"] == poison[:PREVIEW].decode()
        shown = (await client.get(f"{API}/dead-letters/{invalid['seq']}")).json()
        assert shown["body"] == poison.decode()
        assert shown["truncated"] is False
        assert buried["headers"]["X-Trace"] == "t-1"

        filtered = await client.get(f"{API}/dead-letters", params={"consumer": ORDER_PROCESSOR, "stream": "ORDERS"})
        assert len(filtered.json()["letters"]) == 2

        replayed = await client.post(f"{API}/dead-letters/{buried['seq']}/replay")
        assert replayed.status_code == 200
        assert replayed.json()["stream"] == "ORDERS"
        await broker.wait_until_idle()
        assert (await client.get("/orders/o-1")).json()["status"] == "processed"

        refused = await client.post(f"{API}/dead-letters/purge", json={"seqs": [invalid["seq"]]})
        assert refused.status_code == 400
        assert "confirm=true" in refused.json()["detail"]
        purged = await client.post(f"{API}/dead-letters/purge", json={"confirm": True, "seqs": [invalid["seq"]]})
        assert purged.json() == {"purged": 1, "more": False}
        assert [d["seq"] for d in (await client.get(f"{API}/dead-letters")).json()["letters"]] == [billing["seq"]]


async def test_bad_input_is_a_4xx_with_a_reason(broker: Any) -> None:
    app = create_app(broker)
    async with serve(app) as client:
        missing = await client.post(f"{API}/dead-letters/987654/replay")
        assert (missing.status_code, missing.json()) == (404, {"detail": "no dead letter with sequence 987654"})
        assert (await client.get(f"{API}/dead-letters/987654")).status_code == 404
        assert (await client.get(f"{API}/dead-letters/0")).status_code == 400
        bad = await client.get(f"{API}/dead-letters", params={"consumer": "a.b"})
        assert bad.status_code == 400
        assert "consumer must be" in bad.json()["detail"]
        assert (await client.get(f"{API}/dead-letters", params={"limit": 0})).status_code == 422
        unknown = await client.post(f"{API}/dead-letters/purge", json={"confirm": True, "seqs": [987654]})
        assert unknown.status_code == 404
        both = await client.post(f"{API}/dead-letters/purge", json={"confirm": True, "seqs": [1], "consumer": "c"})
        assert both.status_code == 400


async def test_replay_whose_stream_is_gone_is_409(jetstream_broker: JetStreamBroker) -> None:
    app = create_app(jetstream_broker)
    async with serve(app) as client:
        await bury(jetstream_broker, b"{}", stream="GONE")
        [letter] = (await client.get(f"{API}/dead-letters")).json()["letters"]
        response = await client.post(f"{API}/dead-letters/{letter['seq']}/replay")
        assert response.status_code == 409
        assert "stream 'GONE', which no longer exists" in response.json()["detail"]


async def test_a_server_that_does_not_answer_is_503_not_500() -> None:
    app = FastAPI()
    app.include_router(admin_router(insecure=True, broker=JetStreamBroker("nats://127.0.0.1:1")))  # never connected
    async with serve(app) as client:
        for response in (
            await client.get(f"{API}/consumers"),
            await client.get(f"{API}/dead-letters"),
            await client.post(f"{API}/dead-letters/1/replay"),
        ):
            assert response.status_code == 503
            assert "does not answer" in response.json()["detail"]
    bare = FastAPI()  # no jetstream_lifespan, no broker given
    bare.include_router(admin_router(insecure=True))
    async with serve(bare) as client:
        response = await client.get(f"{API}/dead-letters")
        assert response.status_code == 503
        assert "jetstream_lifespan" in response.json()["detail"]


async def test_dead_letters_are_listed_a_page_at_a_time(broker: Any) -> None:
    app = create_app(broker)
    async with serve(app) as client:
        for n in range(5):
            await bury(broker, json.dumps({**ORDER, "id": f"o-{n}"}).encode())
        seqs, after, answers = [], None, []
        while True:
            params: dict[str, Any] = {"limit": 2} if after is None else {"limit": 2, "after": after}
            answer = (await client.get(f"{API}/dead-letters", params=params)).json()
            answers.append(answer)
            seqs += [d["seq"] for d in answer["letters"]]
            after = answer["next"]
            if after is None:
                break
        assert [len(a["letters"]) for a in answers] == [2, 2, 1]
        assert [a["next"] for a in answers] == [seqs[1], seqs[3], None]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        assert (await client.get(f"{API}/dead-letters", params={"after": -1})).status_code == 422
        end = (await client.get(f"{API}/dead-letters", params={"after": seqs[-1]})).json()
        assert end == {"letters": [], "next": None}


async def test_a_refused_replay_is_422_with_its_reason_and_the_letter_stays(broker: Any) -> None:
    app = create_app(broker)
    async with serve(app) as client:
        headers = {ORIGINAL_SUBJECT: "$JS.API.STREAM.DELETE.ORDERS", ORIGINAL_STREAM: "ORDERS"}
        headers |= {ORIGINAL_SEQUENCE: "1", CONSUMER: ORDER_PROCESSOR}
        await broker.publish(dead_letter_subject("ORDERS", ORDER_PROCESSOR), b"{}", headers=headers)
        headers = {ORIGINAL_SUBJECT: ORDERS_CREATED, ORIGINAL_STREAM: "ORDERS", CONSUMER: ORDER_PROCESSOR}
        await broker.publish(dead_letter_subject("ORDERS", ORDER_PROCESSOR), b"{}", headers=headers)  # no sequence
        foreign, malformed = (await client.get(f"{API}/dead-letters")).json()["letters"]
        assert (foreign["malformed"], foreign["partial"]) == (None, False)
        assert "Dlq-Original-Sequence is missing" in malformed["malformed"]
        for letter, reason in ((foreign, "is not one messages are published to"), (malformed, "it is malformed")):
            response = await client.post(f"{API}/dead-letters/{letter['seq']}/replay")
            assert response.status_code == 422, response.text
            assert f"dead letter {letter['seq']} cannot be replayed" in response.json()["detail"]
            assert reason in response.json()["detail"]
            assert (await client.get(f"{API}/dead-letters/{letter['seq']}")).status_code == 200  # kept


async def test_a_duplicate_replay_keeps_the_letter_and_says_so(broker: Any) -> None:
    app = create_app(broker)
    async with serve(app) as client:
        await bury(broker, json.dumps(ORDER).encode())
        [letter] = (await client.get(f"{API}/dead-letters")).json()["letters"]
        # Something stored the replay's msg id before (a replay whose letter deletion was lost, say).
        replay_id = (await broker.dead_letter(letter["seq"])).replay_msg_id
        await broker.publish(ORDERS_CREATED, json.dumps({**ORDER, "id": "o-2"}).encode(), msg_id=replay_id)
        answer = await client.post(f"{API}/dead-letters/{letter['seq']}/replay")
        assert answer.status_code == 200
        assert answer.json() | {"seq": 0} == {"stream": "ORDERS", "seq": 0, "duplicate": True, "kept": True}
        assert (await client.get(f"{API}/dead-letters/{letter['seq']}")).status_code == 200


async def test_the_outbox_section_lists_rows_that_need_a_look_and_retries_them(tmp_path: Any) -> None:
    import asyncio

    from sqlalchemy import update
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from jetstream_fastapi import InMemoryBroker, Message, jetstream_lifespan
    from jetstream_fastapi.outbox import Outbox

    outbox = Outbox(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"), poll_interval=0.2, lease_ttl=1)
    await outbox.create_tables()
    async with AsyncSession(outbox.engine) as session, session.begin():
        msg_id = await outbox.publish(session, "shop.created", "the order", key="<b>k</b>")
    table = outbox.tables.messages
    async with outbox.engine.begin() as connection:  # as a relay leaves a row it could not even dead-letter
        await connection.execute(update(table).values(failed="Refused: " + "x" * 1000))
    broker = InMemoryBroker()
    arrived = asyncio.Event()

    async def handler(message: Message) -> None:
        arrived.set()

    app = FastAPI(lifespan=jetstream_lifespan(broker, outbox=outbox))
    app.include_router(admin_router(insecure=True))
    async with serve(app) as client:
        await broker.subscribe("shop.created", handler, queue="shop")
        view = (await client.get(f"{API}/outbox")).json()
        [row] = view.pop("rows")
        assert view == {"outbox": "jetstream_outbox", "backlog": 0, "oldest_age": 0.0, "failed": 1, "relay": "running"}
        assert (row["msg_id"], row["key"], row["attempts"]) == (msg_id, "<b>k</b>", 0)
        assert row["failed"].startswith("Refused: x") and len(row["failed"]) < 300  # a preview
        assert (await client.post(f"{API}/outbox/retry", json={})).status_code == 400  # every row: confirm
        forged = await client.post(f"{API}/outbox/retry", json={"ids": [row["id"]]}, headers={ADMIN_HEADER: ""})
        assert forged.status_code == 403
        retried = await client.post(f"{API}/outbox/retry", json={"ids": [row["id"]]})
        assert retried.json() == {"retried": [row["id"]]}
        await asyncio.wait_for(arrived.wait(), 10)
    await outbox.engine.dispose()

    broken = Outbox(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'app.db'}"))
    without = FastAPI()
    without.include_router(admin_router(insecure=True, broker=broker, outbox=broken))
    async with serve(without) as client:
        down = await client.get(f"{API}/outbox")
        assert (down.status_code, down.json()) == (
            503,
            {"detail": "the outbox's database does not answer: OperationalError"},
        )
    none = FastAPI()
    none.include_router(admin_router(insecure=True, broker=broker))
    async with serve(none) as client:
        assert (await client.get(f"{API}/outbox")).json() == {"outbox": None}
        assert (await client.post(f"{API}/outbox/retry", json={"ids": [1]})).status_code == 404
