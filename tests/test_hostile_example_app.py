"""The example orders service against hostile HTTP clients: another client's Idempotency-Key, a key that
names another publisher's msg id, and anyone reaching for the dead letters and the admin page. On both
brokers where a broker is involved."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml

from example_app.app import ORDERS_CREATED, create_app, listens_on_loopback
from jetstream_fastapi import Broker
from tests.test_docker import ROOT
from tests.test_example_app import ORDER, serve, settle

TOKEN = "s3cret-admin-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def test_one_clients_key_cannot_suppress_anothers_order(broker: Broker) -> None:
    async with serve(create_app(broker)) as client:
        mine = await client.post("/orders", json=ORDER, headers={"Idempotency-Key": "1"})
        theirs = await client.post("/orders", json={**ORDER, "id": "order-2"}, headers={"Idempotency-Key": "1"})
        assert mine.json()["duplicate"] is False
        assert theirs.json()["duplicate"] is False  # another order under the same key is stored
        assert theirs.json()["msg_id"] != mine.json()["msg_id"]
        await settle(client, broker)
        assert (await client.get("/orders/order-2")).json()["status"] == "processed"


@pytest.mark.parametrize("msg_id", ["replay-DEAD_LETTERS-1", "dlq-ORDERS-1-order-processor", "order-1"])
async def test_a_key_cannot_take_another_publishers_msg_id(broker: Broker, msg_id: str) -> None:
    async with serve(create_app(broker)) as client:
        # Another publisher (a replay, a dead letter, another service) stored a message under msg_id.
        await broker.publish(ORDERS_CREATED, json.dumps({**ORDER, "id": "theirs"}).encode(), msg_id=msg_id)
        mine = await client.post("/orders", json=ORDER, headers={"Idempotency-Key": msg_id})
        assert mine.status_code == 202
        assert mine.json()["duplicate"] is False  # the key did not hit their msg id
        assert mine.json()["msg_id"] != msg_id
        await settle(client, broker)
        assert (await client.get("/orders/order-1")).json()["status"] == "processed"


@pytest.mark.parametrize("key", ["", "a b", "a;b", "k" * 129, "a,b", "<x>"])
async def test_an_idempotency_key_out_of_charset_or_length_is_422(broker: Broker, key: str) -> None:
    async with serve(create_app(broker)) as client:
        response = await client.post("/orders", json=ORDER, headers={"Idempotency-Key": key})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


@pytest.mark.parametrize("key", ["k", "k" * 128, "0b5e3c62-95d2-4a9a-8a39-8f1b9c7a1d2e", "AbC+/9=_.:~-"])
async def test_an_idempotency_key_in_charset_and_length_is_accepted(broker: Broker, key: str) -> None:
    async with serve(create_app(broker)) as client:
        response = await client.post("/orders", json=ORDER, headers={"Idempotency-Key": key})
        assert response.status_code == 202


ADMIN_PATHS = [
    ("GET", "/admin/jetstream"),
    ("GET", "/admin/jetstream/api/dead-letters"),
    ("GET", "/admin/jetstream/api/consumers"),
    ("POST", "/admin/jetstream/api/dead-letters/1/replay"),
    ("GET", "/dead-letters"),
    ("POST", "/dead-letters/1/replay"),
]


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()}


async def test_with_a_token_the_admin_and_dead_letters_need_it(broker: Broker) -> None:
    async with serve(create_app(broker, admin_token=TOKEN)) as client:  # any Host: the token decides
        for method, path in ADMIN_PATHS:
            page = path.startswith("/admin/")
            for headers in ({}, {"Authorization": "Bearer guess"}, basic("guess"), {"Authorization": "Basic !!"}):
                refused = await client.request(method, path, headers={**headers, "X-JetStream-Admin": "1"})
                assert refused.status_code == 401, (method, path, headers)
                # The page's challenge makes a browser ask for the token (as the password).
                assert refused.headers["www-authenticate"].startswith("Basic" if page else "Bearer")
            let_in = await client.request(method, path, headers={**BEARER, "X-JetStream-Admin": "1"})
            assert let_in.status_code in (200, 404), (method, path, let_in.text)  # 404: no letter 1
            # Basic, which a browser sends again by itself, only where a CSRF defence stands (the page's).
            by_browser = await client.request(method, path, headers={**basic(TOKEN), "X-JetStream-Admin": "1"})
            assert by_browser.status_code in ((200, 404) if page else (401,)), (method, path)
        assert (await client.get("/orders/order-1")).status_code == 404  # the orders API needs no token
        assert (await client.get("/health/ready")).status_code == 200


async def test_a_cross_site_post_is_refused_even_with_the_token(broker: Broker) -> None:
    # A browser that remembered the Basic credentials sends them along with a cross-site post.
    async with serve(create_app(broker, admin_token=TOKEN)) as client:
        await broker.publish(ORDERS_CREATED, b"poison")  # not an Order: dead-lettered
        await broker.wait_until_idle()
        letters = (await client.get("/dead-letters", headers=BEARER)).json()
        [seq] = [letter["seq"] for letter in letters if letter["consumer"] == "order-processor"]
        for headers in (basic(TOKEN), {**basic(TOKEN), "X-JetStream-Admin": "1", "Origin": "https://evil.example"}):
            refused = await client.post(f"/admin/jetstream/api/dead-letters/{seq}/replay", headers=headers)
            assert refused.status_code == 403
            assert (await client.post(f"/dead-letters/{seq}/replay", headers=headers)).status_code == 401
        assert len((await client.get("/dead-letters", headers=BEARER)).json()) == len(letters)  # none replayed


def test_a_short_token_is_refused() -> None:
    with pytest.raises(ValueError, match="ADMIN_TOKEN must be at least 16 characters"):
        create_app(admin_token="short")


async def test_without_a_token_the_admin_answers_loopback_only(broker: Broker) -> None:
    async with serve(create_app(broker)) as client:  # base URL http://orders.test: not a loopback name
        for method, path in ADMIN_PATHS[:4]:
            response = await client.request(method, path, headers={"X-JetStream-Admin": "1"})
            assert response.status_code == 403, (method, path)
        local = {"Host": "127.0.0.1:8000"}
        assert (await client.get("/admin/jetstream/api/dead-letters", headers=local)).status_code == 200
        # The service's own dead-letter routes are mounted with a token only (they have no loopback rule).
        assert (await client.get("/dead-letters", headers=local)).status_code == 404


async def test_without_a_token_off_loopback_no_admin_is_mounted(broker: Broker) -> None:
    async with serve(create_app(broker, local_admin=False)) as client:
        local = {"Host": "127.0.0.1:8000", "X-JetStream-Admin": "1"}
        for method, path in ADMIN_PATHS:
            assert (await client.request(method, path, headers=local)).status_code in (404, 405), path


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False)],
)
def test_the_admin_is_local_only_when_the_app_listens_on_loopback(host: str, expected: bool) -> None:
    assert listens_on_loopback(host) is expected


def test_compose_publishes_the_app_on_loopback_and_passes_the_token() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    for name in ("app", "prometheus"):
        for port in compose["services"][name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert "ADMIN_TOKEN" in compose["services"]["app"]["environment"]
