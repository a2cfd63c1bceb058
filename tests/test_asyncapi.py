"""The AsyncAPI 3.0 document: built from routers and publications, valid against the official JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import BaseModel

from example_app.app import ORDER_PROCESSOR, ORDERS_CREATED, consumer_router, create_app
from jetstream_fastapi import (
    ConsumerRouter,
    InMemoryBroker,
    InvalidArgumentError,
    Message,
    Publication,
    asyncapi_document,
    asyncapi_router,
)

# The official schema, vendored (tests/data/README.md says from where).
SCHEMA = json.loads((Path(__file__).parent / "data" / "asyncapi-3.0.0.json").read_text())


def validate(document: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(document)


class Item(BaseModel):
    sku: str
    count: int


class Basket(BaseModel):
    """A shopping basket."""

    items: list[Item]


def test_the_validator_rejects_a_broken_document() -> None:
    """The check can fail: a document missing ``info`` or with a bad operation action is refused."""
    with pytest.raises(jsonschema.ValidationError):
        validate({"asyncapi": "3.0.0"})
    document = asyncapi_document(consumer_router)
    next(iter(document["operations"].values()))["action"] = "consume"
    with pytest.raises(jsonschema.ValidationError):
        validate(document)


def test_example_app_document_lists_its_subjects_and_schemas() -> None:
    outbox = create_app(InMemoryBroker()).state.outbox  # POST /orders publishes through it
    document = asyncapi_document(
        consumer_router, outboxes=[outbox], title="Orders", version="1.0.0", servers=["nats://u:p@localhost:4222"]
    )
    validate(document)
    assert document["servers"] == {"nats": {"host": "localhost:4222", "protocol": "nats"}}  # no credentials
    [channel] = document["channels"].values()
    assert channel["address"] == ORDERS_CREATED
    actions = {op["action"]: op for op in document["operations"].values()}
    assert set(actions) == {"send", "receive"}
    assert actions["send"]["x-jetstream-outbox"] == {"table": "jetstream_outbox"}
    receive = actions["receive"]
    assert receive["bindings"]["nats"]["queue"] == ORDER_PROCESSOR
    assert receive["x-jetstream-consumer"]["durable"] is True
    assert document["components"]["messages"]["Order"]["payload"] == {"$ref": "#/components/schemas/Order"}
    order = document["components"]["schemas"]["Order"]
    assert set(order["required"]) == {"id", "item", "quantity"}
    assert order["properties"]["quantity"]["exclusiveMinimum"] == 0


def test_every_payload_kind_and_options() -> None:
    router = ConsumerRouter(max_deliver=3)

    @router.handle("shop.basket", queue="baskets", concurrency=4)
    async def basket(b: Basket) -> None:
        """Checks a basket out."""

    @router.handle("shop.raw.>")
    async def raw(msg: Message) -> None: ...

    @router.handle("shop.bytes", queue="b")
    async def as_bytes(body: bytes) -> None: ...

    @router.handle("shop.text", queue="t")
    async def as_text(body: str) -> None: ...

    @router.handle("shop.list", queue="l")
    async def as_list(items: list[Item]) -> None: ...

    extra = Publication("shop.audit", dict[str, int], description="audit counters")
    document = asyncapi_document(router, publications=[extra])
    validate(document)
    ops = {op["channel"]["$ref"].rsplit("/", 1)[-1]: op for op in document["operations"].values()}
    channels = document["channels"]
    assert channels["shop_raw_all"]["address"] == "shop.raw.>"
    messages = document["components"]["messages"]

    def message_of(channel: str) -> dict[str, Any]:
        [ref] = ops[channel]["messages"]
        assert ref["$ref"].startswith(f"#/channels/{channel}/messages/")
        key = ref["$ref"].rsplit("/", 1)[-1]
        assert channels[channel]["messages"][key] == {"$ref": f"#/components/messages/{key}"}
        return messages[key]  # type: ignore[no-any-return]

    assert message_of("shop_raw_all")["payload"] == {"type": "string", "format": "binary"}
    assert message_of("shop_bytes")["contentType"] == "application/octet-stream"
    assert message_of("shop_text")["payload"] == {"type": "string"}
    assert message_of("shop_list")["payload"]["items"] == {"$ref": "#/components/schemas/Item"}
    assert message_of("shop_audit")["payload"]["additionalProperties"] == {"type": "integer"}
    assert ops["shop_audit"]["action"] == "send"
    assert ops["shop_audit"]["description"] == "audit counters"
    assert "Item" in document["components"]["schemas"]  # the nested model, hoisted
    basket_op = ops["shop_basket"]
    assert basket_op["description"] == "Checks a basket out."
    assert basket_op["x-jetstream-consumer"]["options"] == {"max_deliver": 3, "concurrency": 4}
    assert "bindings" not in ops["shop_raw_all"]  # no queue: an ephemeral consumer per instance
    assert ops["shop_raw_all"]["x-jetstream-consumer"]["durable"] is False


def test_a_router_declares_what_it_publishes_and_nests() -> None:
    inner = ConsumerRouter()
    created = inner.publisher("shop.created", Basket)
    outer = ConsumerRouter()
    outer.include_router(inner)
    assert outer.publications == [created]
    with pytest.raises(InvalidArgumentError, match="already declared"):
        outer.publisher("shop.created", Item)
    with pytest.raises(InvalidArgumentError):
        Publication("shop.*", Basket)  # a publication has a literal subject


async def test_publication_publishes_typed_payloads() -> None:
    basket = Publication("shop.basket", Basket)
    async with InMemoryBroker() as broker:
        seen: list[Basket] = []
        router = ConsumerRouter()

        @router.handle("shop.basket", queue="q")
        async def handle(b: Basket) -> None:
            seen.append(b)

        await router.start(broker)
        ack = await basket.publish(broker, Basket(items=[Item(sku="a", count=1)]), msg_id="m-1")
        assert ack.seq == 1
        await broker.wait_until_idle()
        assert seen == [Basket(items=[Item(sku="a", count=1)])]
        with pytest.raises(InvalidArgumentError, match="carries Basket, got Item"):
            await basket.publish(broker, Item(sku="a", count=1))  # type: ignore[arg-type]
        counts = Publication("shop.counts", dict[str, int])
        assert counts.encode({"a": 1}) == b'{"a":1}'
        with pytest.raises(InvalidArgumentError, match="invalid payload"):
            counts.encode({"a": "x"})  # type: ignore[dict-item]


async def test_router_serves_json_and_an_escaped_page() -> None:
    router = ConsumerRouter()

    @router.handle("shop.evil", queue="q")
    async def evil(msg: Message) -> None:
        """<script>alert(1)</script>"""

    app = create_app(InMemoryBroker())  # the example app includes asyncapi_router()
    app.include_router(asyncapi_router(router, title="<b>Shop</b>", path="/docs/events"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/asyncapi.json")
        assert response.status_code == 200
        validate(response.json())
        assert response.json()["info"]["title"] == "Orders"
        page = await client.get("/asyncapi")
        assert page.headers["content-type"].startswith("text/html")
        assert "orders.created" in page.text
        assert "order-processor" in page.text
        evil_page = (await client.get("/docs/events")).text
        assert "<script>" not in evil_page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in evil_page
        assert "&lt;b&gt;Shop&lt;/b&gt;" in evil_page
        assert 'href="events.json"' in evil_page
        assert (await client.get("/docs/events.json")).status_code == 200


def test_a_handler_that_answers_requests_has_a_reply_with_its_return_type() -> None:
    router = ConsumerRouter()

    @router.handle("shop.price", queue="pricer")
    async def price(item: Item) -> Basket:
        return Basket(items=[item])

    @router.handle("shop.echo", queue="echo")
    async def echo(msg: Message) -> bytes:
        return msg.body

    @router.handle("replies", queue="plain")  # a subject named like the replies' channel
    async def plain(msg: Message) -> None: ...

    document = asyncapi_document(router)
    validate(document)
    ops = {op["summary"].split()[0].rsplit(".", 1)[-1]: op for op in document["operations"].values()}
    reply = ops["price"]["reply"]
    assert reply["address"]["location"] == "$message.header#/Request-Reply-To"
    channel = reply["channel"]["$ref"].rsplit("/", 1)[-1]
    assert document["channels"][channel]["address"] is None  # each request names its own
    subject_channel = ops["plain"]["channel"]["$ref"].rsplit("/", 1)[-1]
    assert subject_channel != channel and document["channels"][subject_channel]["address"] == "replies"
    [ref] = reply["messages"]
    key = ref["$ref"].rsplit("/", 1)[-1]
    assert ref["$ref"] == f"#/channels/{channel}/messages/{key}"
    assert document["components"]["messages"][key]["payload"] == {"$ref": "#/components/schemas/Basket"}
    [echoed] = ops["echo"]["reply"]["messages"]
    assert document["components"]["messages"][echoed["$ref"].rsplit("/", 1)[-1]]["contentType"] == (
        "application/octet-stream"
    )
    assert "reply" not in ops["plain"]  # returns None: answers nothing


def test_the_cli_documents_an_app_built_as_the_readme_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``jetstream-fastapi asyncapi module:app`` finds the routers the app's lifespan holds."""
    from jetstream_fastapi.cli.apps import load_document

    (tmp_path / "readme_app.py").write_text(
        "from fastapi import FastAPI\n"
        "from jetstream_fastapi import ConsumerRouter, InMemoryBroker, Message, jetstream_lifespan\n"
        "router = ConsumerRouter()\n"
        "@router.handle('orders.created', queue='order-processor')\n"
        "async def process(msg: Message) -> None: ...\n"
        "app = FastAPI(title='Shop', version='2.0', lifespan=jetstream_lifespan(InMemoryBroker(), router))\n"
        "@app.get('/orders')\n"
        "async def orders() -> list[str]: return []\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    document = load_document("readme_app:app")
    validate(document)
    assert [channel["address"] for channel in document["channels"].values()] == ["orders.created"]
    assert (document["info"]["title"], document["info"]["version"]) == ("Shop", "2.0")


def test_outbox_publications_are_send_operations_marked_with_the_outbox(tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from jetstream_fastapi.outbox import Outbox

    outbox = Outbox(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"), name="shop_outbox")
    basket_added = outbox.publisher("shop.basket", Basket, description="A basket, after its transaction commits")
    assert (basket_added.subject, outbox.subjects) == ("shop.basket", ("shop.basket",))  # its window is checked
    router = ConsumerRouter()

    @router.handle("shop.basket", queue="packer")
    async def pack(basket: Basket) -> None: ...

    document = asyncapi_document(router, outboxes=[outbox])
    validate(document)
    [channel] = document["channels"].values()
    assert list(channel["messages"]) == ["Basket"]
    sends = [op for op in document["operations"].values() if op["action"] == "send"]
    assert sends == [
        {
            "action": "send",
            "channel": {"$ref": "#/channels/shop_basket"},
            "summary": "publishes to shop.basket through the outbox shop_outbox (after the transaction commits)",
            "messages": [{"$ref": "#/channels/shop_basket/messages/Basket"}],
            "description": "A basket, after its transaction commits",
            "x-jetstream-outbox": {"table": "shop_outbox"},
        }
    ]
    served = asyncapi_router(router, outboxes=[outbox], title="Shop")
    assert served.routes
