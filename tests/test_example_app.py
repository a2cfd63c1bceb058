"""The example orders service: in process on the in-memory broker, and end to end under uvicorn on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from example_app.app import ORDERS_CREATED, create_app
from jetstream_fastapi import Backoff, Broker, InMemoryBroker, JetStreamBroker
from jetstream_fastapi.server import NatsServer
from tests.conftest import eventually

FAST_BACKOFF = Backoff(initial=0.02, maximum=0.1, jitter=0.0)
ORDER = {"id": "order-1", "item": "book", "quantity": 2}
ADMIN_TOKEN = "example-admin-token"


# `broker` comes from the testing kit (jetstream_fastapi.testing): each test below that takes it runs on
# the in-memory broker and on a real nats-server, unchanged.


@pytest.fixture
async def client(broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    # With an admin token (sent by this client): the service's /dead-letters routes exist only with one.
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with serve(create_app(broker, admin_token=ADMIN_TOKEN), headers=bearer) as client:
        yield client


@contextlib.asynccontextmanager
async def serve(app: FastAPI, headers: dict[str, str] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of ``app`` with its lifespan running (the broker connected, the consumer started)."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://orders.test", headers=headers) as client:
            yield client


async def settle(client: httpx.AsyncClient, broker: Any) -> None:
    """Wait until the outbox published every stored order (its backlog, on the readiness probe, is 0), then
    until the consumers handled everything."""

    async def relayed() -> None:
        assert (await client.get("/health/ready")).json()["outbox"]["backlog"] == 0

    await eventually(relayed)  # the table signals nothing: poll its state
    await broker.wait_until_idle()


# -- in process, on both brokers ---------------------------------------------------------------


async def test_posted_order_is_processed(client: httpx.AsyncClient, broker: Any) -> None:
    response = await client.post("/orders", json=ORDER)
    assert response.status_code == 202
    body = response.json()
    assert body == {"id": "order-1", "msg_id": body["msg_id"], "duplicate": False}

    await settle(client, broker)
    response = await client.get("/orders/order-1")
    assert response.status_code == 200
    assert response.json() == {"id": "order-1", "status": "processed", "attempts": 1}
    assert (await client.get("/orders/order-1/invoices")).json() == {"order_id": "order-1", "invoices": 1}
    assert await broker.list_dead_letters() == []


async def test_unknown_order_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/orders/never-posted")
    assert response.status_code == 404


@pytest.mark.parametrize(
    "payload",
    [
        {"id": "", "item": "book", "quantity": 1},
        {"id": "o", "item": "book", "quantity": 0},
        {"id": "o", "item": "book", "quantity": -3},
        {"id": "o", "item": "book", "quantity": "many"},
        {"id": "o", "item": "book"},
        {"item": "book", "quantity": 1},
        ["not", "an", "object"],
        "not json at all",
    ],
)
async def test_invalid_order_is_422_and_not_published(
    client: httpx.AsyncClient, broker: InMemoryBroker, payload: object
) -> None:
    if isinstance(payload, str):
        response = await client.post("/orders", content=payload, headers={"Content-Type": "application/json"})
    else:
        response = await client.post("/orders", json=payload)
    assert response.status_code == 422
    # Nothing was stored nor published: only the next valid order is processed.
    response = await client.post("/orders", json=ORDER)
    assert response.status_code == 202
    await settle(client, broker)
    assert (await client.get("/orders/o")).status_code == 404
    assert (await client.get("/orders/order-1")).json()["attempts"] == 1
    assert await broker.list_dead_letters() == []


async def test_idempotency_key_stores_a_retry_once(client: httpx.AsyncClient, broker: Any) -> None:
    headers = {"Idempotency-Key": "client-retry-1"}
    first = await client.post("/orders", json=ORDER, headers=headers)
    retry = await client.post("/orders", json=ORDER, headers=headers)
    assert first.status_code == retry.status_code == 202
    assert first.json()["duplicate"] is False
    assert retry.json() == {**first.json(), "duplicate": True}

    await settle(client, broker)
    response = await client.get("/orders/order-1")
    assert response.json() == {"id": "order-1", "status": "processed", "attempts": 1}

    # The order is stored: the same id under another key (or none) is refused, not stored twice.
    other = await client.post("/orders", json=ORDER, headers={"Idempotency-Key": "client-retry-2"})
    assert other.status_code == 409
    assert (await client.post("/orders", json=ORDER)).status_code == 409


async def test_malformed_message_on_the_stream_is_rejected_not_redelivered(
    client: httpx.AsyncClient, broker: InMemoryBroker
) -> None:
    await broker.publish(ORDERS_CREATED, b"{not json")
    await broker.publish(ORDERS_CREATED, b'{"id": "x", "item": "book", "quantity": 0}')
    await broker.wait_until_idle()
    dead = await broker.list_dead_letters()
    # Each consumer of the subject (the processor, billing) rejects each of them on its own.
    assert sorted((d.attempts, d.error_type, d.consumer) for d in dead) == [
        (1, "Reject", "billing"),
        (1, "Reject", "billing"),
        (1, "Reject", "order-processor"),
        (1, "Reject", "order-processor"),
    ]
    assert all("invalid payload" in d.error for d in dead)
    assert any("greater than 0" in d.error for d in dead)  # the validation error itself
    assert (await client.get("/orders/x")).status_code == 404


async def test_dead_letters_endpoint_lists_and_replays(client: httpx.AsyncClient, broker: Any) -> None:
    await broker.publish(ORDERS_CREATED, b'{"id": "late", "item": "book"}')  # quantity missing: poison
    await broker.wait_until_idle()
    letters = (await client.get("/dead-letters")).json()
    assert sorted(letter["consumer"] for letter in letters) == ["billing", "order-processor"]
    [letter] = [letter for letter in letters if letter["consumer"] == "order-processor"]
    assert (letter["subject"], letter["error_type"], letter["consumer"]) == (
        ORDERS_CREATED,
        "Reject",
        "order-processor",
    )
    assert "invalid payload" in letter["error"]
    assert "quantity" in letter["error"]
    assert (await client.post("/dead-letters/999/replay")).status_code == 404
    replayed = await client.post(f"/dead-letters/{letter['seq']}/replay")
    assert replayed.status_code == 202
    await broker.wait_until_idle()
    # Still poison: it comes back as a new dead letter of its consumer only, and the replayed one is gone.
    letters = (await client.get("/dead-letters")).json()
    assert sorted(letter["consumer"] for letter in letters) == ["billing", "order-processor"]
    [again] = [letter for letter in letters if letter["consumer"] == "order-processor"]
    assert again["seq"] != letter["seq"]
    assert again["body"] == letter["body"]


async def test_an_order_posted_while_nats_is_down_is_stored_and_published_once_it_answers() -> None:
    broker = InMemoryBroker()
    async with serve(create_app(broker)) as client:
        broker.faults.drop_connection()
        response = await client.post("/orders", json=ORDER, headers={"Idempotency-Key": "k-1"})
        assert response.status_code == 202  # stored with its event: nothing waits for NATS
        ready = (await client.get("/health/ready")).json()
        assert (ready["ready"], ready["outbox"]["backlog"]) == (False, 1)
        assert (await client.get("/orders/order-1")).json()["status"] == "pending"
        broker.faults.restore_connection()
        await settle(client, broker)
        assert (await client.get("/orders/order-1")).json() == {"id": "order-1", "status": "processed", "attempts": 1}
        assert (await client.get("/orders/order-1/invoices")).json()["invoices"] == 1


async def test_a_stalled_server_holds_no_request_and_the_order_goes_out_once(fresh_server: NatsServer) -> None:
    # What a user meets: the server stops answering (SIGSTOP) while orders are posted.
    broker = JetStreamBroker(fresh_server.url, publish_timeout=1.0, fetch_wait=1.0)
    async with serve(create_app(broker)) as client:
        assert (await client.post("/orders", json=ORDER)).status_code == 202  # the stream exists now
        await settle(client, broker)
        order = {**ORDER, "id": "order-2"}
        fresh_server.pause()
        try:
            response = await client.post("/orders", json=order, headers={"Idempotency-Key": "order-2"})
            retried = await client.post("/orders", json=order, headers={"Idempotency-Key": "order-2"})
        finally:
            fresh_server.resume()
        assert (response.status_code, retried.json()["duplicate"]) == (202, True)
        await settle(client, broker)
        status = (await client.get("/orders/order-2")).json()
        assert (status["status"], status["attempts"]) == ("processed", 1)
        assert (await client.get("/orders/order-2/invoices")).json()["invoices"] == 1


@pytest.mark.parametrize("limit", ["-1", "0", "1001", "many"])
async def test_dead_letters_limit_out_of_range_is_422(client: httpx.AsyncClient, limit: str) -> None:
    response = await client.get("/dead-letters", params={"limit": limit})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_dead_letters_limit_in_range(client: httpx.AsyncClient) -> None:
    assert (await client.get("/dead-letters", params={"limit": "1"})).status_code == 200
    assert (await client.get("/dead-letters", params={"limit": "1000"})).status_code == 200


async def test_a_2_mb_body_is_413_and_not_echoed(client: httpx.AsyncClient, broker: Any) -> None:
    body = json.dumps({"id": "big", "item": "x" * (2 * 1024 * 1024), "quantity": 1}).encode()
    response = await client.post("/orders", content=body, headers={"content-type": "application/json"})
    print(f"{len(body)} bytes with a Content-Length: {response.status_code}, {len(response.content)} bytes back")
    assert response.status_code == 413
    assert len(response.content) < 200
    assert b"xxxx" not in response.content


async def test_a_2_mb_chunked_body_is_413_too(client: httpx.AsyncClient) -> None:
    chunk = b"x" * 65536

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"id": "big", "quantity": 1, "item": "'
        for _ in range(32):
            yield chunk
        yield b'"}'

    response = await client.post("/orders", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert len(response.content) < 200


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "nats": True}


async def test_each_app_has_its_own_store() -> None:
    first_broker, second_broker = InMemoryBroker(), InMemoryBroker()
    async with serve(create_app(first_broker)) as first, serve(create_app(second_broker)) as second:
        assert (await first.post("/orders", json=ORDER)).status_code == 202
        await settle(first, first_broker)
        assert (await first.get("/orders/order-1")).json()["status"] == "processed"
        assert (await second.get("/orders/order-1")).status_code == 404


async def test_a_redelivered_order_is_billed_once(broker: Any) -> None:
    app = create_app(broker)
    async with serve(app) as client:
        await broker.publish(ORDERS_CREATED, json.dumps(ORDER).encode(), msg_id="from-elsewhere")
        await broker.wait_until_idle()
        # The same message again (a redelivery after a lost ack, a replay): processed again, billed once.
        await broker.publish(ORDERS_CREATED, json.dumps(ORDER).encode(), msg_id="from-elsewhere-again")
        await broker.wait_until_idle()
        assert (await client.get("/orders/order-1")).json() == {"id": "order-1", "status": "processed", "attempts": 2}
        assert (await client.get("/orders/order-1/invoices")).json()["invoices"] == 2  # two messages, two bills


# -- end to end: `python -m example_app` under uvicorn, on a real nats-server ----------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Output:
    """Collects what a subprocess prints, for assertions and failure messages."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._lines: list[str] = []
        self.done = asyncio.ensure_future(self._collect(stream))

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self._lines.append(line.decode(errors="replace"))

    def __str__(self) -> str:
        return "".join(self._lines)


async def wait_until_healthy(
    http: httpx.AsyncClient, process: asyncio.subprocess.Process, output: Output, timeout: float = 30.0
) -> None:
    """Poll /healthz until the app answers, failing early if the process dies."""
    deadline = time.monotonic() + timeout
    while True:
        if process.returncode is not None:
            pytest.fail(f"example_app exited with {process.returncode} before answering:\n{output}")
        try:
            response = await http.get("/healthz")
        except httpx.TransportError:
            pass  # not listening yet
        else:
            assert response.json() == {"status": "ok", "nats": True}
            return
        if time.monotonic() > deadline:
            pytest.fail(f"example_app did not answer /healthz within {timeout}s:\n{output}")
        await asyncio.sleep(0.05)


async def test_end_to_end_under_uvicorn(nats_server: NatsServer, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "NATS_URL": nats_server.url, "HOST": "127.0.0.1", "PORT": str(port)}
    env.pop("ADMIN_TOKEN", None)  # the local-only admin is checked below
    env.pop("ORDERS_DB", None)  # the default: orders.db in the working directory (a fresh one)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent), env.get("PYTHONPATH", "")])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "example_app",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = Output(process.stdout)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as http:
            await wait_until_healthy(http, process, output)

            order = {"id": f"e2e-{uuid.uuid4().hex}", "item": "lamp", "quantity": 1}
            headers = {"Idempotency-Key": order["id"]}
            first = await http.post("/orders", json=order, headers=headers)
            retry = await http.post("/orders", json=order, headers=headers)
            assert first.status_code == retry.status_code == 202, first.text
            assert retry.json() == {**first.json(), "duplicate": True}

            deadline = time.monotonic() + 10.0
            while (status := (await http.get(f"/orders/{order['id']}")).json())["status"] != "processed":
                assert time.monotonic() < deadline, f"order not processed within 10 s: {status}\n{output}"
                await asyncio.sleep(0.05)
            assert status == {"id": order["id"], "status": "processed", "attempts": 1}
            # No ADMIN_TOKEN, on loopback: the admin page for local use, the dead-letter routes not mounted.
            assert (await http.get("/admin/jetstream")).status_code == 200
            assert (await http.get("/dead-letters")).status_code == 404

        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), timeout=5.0)
        await output.done
        assert returncode == 0, str(output)
        assert f"orders service on http://127.0.0.1:{port} using NATS at {nats_server.url}" in str(output)
        assert "Application shutdown complete" in str(output)
        assert "admin page: /admin/jetstream, for local use only" in str(output)
        assert (tmp_path / "orders.db").exists()  # the orders, kept in the working directory
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await output.done
