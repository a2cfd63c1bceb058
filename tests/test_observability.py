"""Observability: one trace from an HTTP request through publish to the handler, /metrics after a known
workload on both brokers, log fields, and the bad cases (a malformed traceparent, a scrape while NATS is down)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from example_app.app import ORDER_PROCESSOR, ORDERS_CREATED
from jetstream_fastapi import (
    Backoff,
    Broker,
    ConsumerRouter,
    InMemoryBroker,
    InvalidArgumentError,
    JetStreamBroker,
    Message,
    Reject,
    Retry,
    get_broker,
    jetstream_lifespan,
    metrics_router,
)
from jetstream_fastapi.backends.base import Outgoing
from jetstream_fastapi.observability import tracing
from jetstream_fastapi.server import NatsServer
from tests.conftest import BrokerFactory, eventually

FAST_BACKOFF = Backoff(initial=0.01, maximum=0.02, jitter=0.0)


class _Armed(SpanProcessor):
    """Keeps finished spans only while a test of this module has armed it (the provider is global, set once
    per process: the rest of the suite must not pile spans up)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.armed = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.armed:
            self.exporter.export([span])


_PROCESSOR = _Armed()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider (set globally once) whose finished spans this test sees."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_PROCESSOR)
        trace.set_tracer_provider(provider)
        tracing._next_look = 0.0  # the library looks for a provider once a second: look again now
    _PROCESSOR.exporter.clear()
    _PROCESSOR.armed = True
    yield _PROCESSOR.exporter
    _PROCESSOR.armed = False
    _PROCESSOR.exporter.clear()


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def _uvicorn(app: FastAPI) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a loopback port of its own; yields its base URL."""
    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        sock.close()


def _by_id(finished: tuple[ReadableSpan, ...]) -> dict[int, ReadableSpan]:
    return {span.context.span_id: span for span in finished}


def _ancestors(span: ReadableSpan, spans: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    chain = []
    while span.parent is not None and span.parent.span_id in spans:
        span = spans[span.parent.span_id]
        chain.append(span)
    return chain


def _tree(finished: tuple[ReadableSpan, ...]) -> str:
    """The spans as an indented tree with their durations, children in start order."""
    spans = _by_id(finished)
    lines: list[str] = []

    def walk(span: ReadableSpan, depth: int) -> None:
        duration = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        lines.append(f"{'  ' * depth}{span.name} [{span.kind.name}] {duration:.1f} ms")
        children = [s for s in finished if s.parent is not None and s.parent.span_id == span.context.span_id]
        for child in sorted(children, key=lambda s: s.start_time or 0):
            walk(child, depth + 1)

    roots = [s for s in finished if s.parent is None or s.parent.span_id not in spans]
    for root in sorted(roots, key=lambda s: s.start_time or 0):
        walk(root, 0)
    return "\n".join(lines)


# -- tracing -----------------------------------------------------------------------------------


async def test_one_trace_from_the_http_request_through_publish_to_the_handler(
    spans: InMemorySpanExporter, fresh_server: NatsServer
) -> None:
    # A server of its own: the durable consumer must not meet other tests' orders. The route publishes
    # directly (the example app publishes through its outbox, whose relay runs outside the request).
    broker = JetStreamBroker(fresh_server.url, fetch_wait=1.0)
    router = ConsumerRouter()
    processed = asyncio.Event()

    @router.handle(ORDERS_CREATED, queue=ORDER_PROCESSOR)
    async def process_order(order: dict[str, Any]) -> None:
        processed.set()

    app = FastAPI(lifespan=jetstream_lifespan(broker, router))

    @app.post("/orders", status_code=202)
    async def create_order(order: dict[str, Any], sent: Broker = Depends(get_broker)) -> dict[str, Any]:
        ack = await sent.publish(ORDERS_CREATED, json.dumps(order).encode())
        return {"seq": ack.seq}

    FastAPIInstrumentor.instrument_app(app)
    order_id = f"order-{uuid.uuid4().hex[:8]}"
    async with _uvicorn(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/orders", json={"id": order_id, "item": "book", "quantity": 1})
        assert response.status_code == 202, response.text
        seq = response.json()["seq"]
        await asyncio.wait_for(processed.wait(), 20)
        await broker.wait_until_idle()
    finished = spans.get_finished_spans()
    print(_tree(finished))  # the span tree of this run (the README's example; pytest -s shows it)
    publish = [s for s in finished if s.name == f"publish {ORDERS_CREATED}"]
    process = [s for s in finished if s.name == f"process {ORDERS_CREATED}"]
    assert len(publish) == 1 and len(process) == 1, [s.name for s in finished]
    publish_span, process_span = publish[0], process[0]
    assert publish_span.kind is SpanKind.PRODUCER and process_span.kind is SpanKind.CONSUMER
    # One trace: the HTTP server span is an ancestor of the publish, which is the parent of the process.
    assert process_span.context.trace_id == publish_span.context.trace_id
    assert process_span.parent is not None and process_span.parent.span_id == publish_span.context.span_id
    ancestors = _ancestors(publish_span, _by_id(finished))
    assert any(span.kind is SpanKind.SERVER and "POST /orders" in span.name for span in ancestors), [
        span.name for span in ancestors
    ]
    assert dict(publish_span.attributes or {}) == {
        "messaging.system": "nats",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": ORDERS_CREATED,
        "messaging.message.id": publish_span.attributes["messaging.message.id"],  # type: ignore[index]
        "messaging.message.body.size": publish_span.attributes["messaging.message.body.size"],  # type: ignore[index]
        "messaging.nats.stream": "ORDERS",
        "messaging.nats.stream.sequence": seq,
    }
    attributes = dict(process_span.attributes or {})
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == ORDERS_CREATED
    assert attributes["messaging.consumer.group.name"] == ORDER_PROCESSOR
    assert attributes["messaging.message.id"] == publish_span.attributes["messaging.message.id"]  # type: ignore[index]
    assert attributes["messaging.nats.stream.sequence"] == seq
    assert attributes["messaging.nats.delivery.attempt"] == 1
    assert attributes["messaging.nats.outcome"] == "ack"


async def test_outcomes_and_redeliveries_share_the_trace(
    spans: InMemorySpanExporter, make_broker: BrokerFactory
) -> None:
    broker = await make_broker(max_deliver=2, backoff=FAST_BACKOFF)
    subject = f"trace.{uuid.uuid4().hex[:8]}"
    seen: list[str | None] = []

    async def handler(message: Message) -> None:
        seen.append(format(trace.get_current_span().get_span_context().trace_id, "032x"))
        raise Retry(after=0)

    await broker.subscribe(subject, handler, queue=f"q{uuid.uuid4().hex[:8]}")
    await broker.publish(subject, b"x")
    await broker.wait_until_idle()
    processed = [s for s in spans.get_finished_spans() if s.name == f"process {subject}"]
    assert [s.attributes["messaging.nats.outcome"] for s in processed] == ["nak", "dead_letter"]  # type: ignore[index]
    assert [s.attributes["messaging.nats.delivery.attempt"] for s in processed] == [1, 2]  # type: ignore[index]
    assert all(s.attributes["error.type"] == "Retry" for s in processed)  # type: ignore[index]
    assert len({s.context.trace_id for s in processed}) == 1
    # The handler sees its span as the current one.
    assert seen == [format(processed[0].context.trace_id, "032x")] * 2


@pytest.mark.parametrize(
    "traceparent",
    ["garbage", "00-00000000000000000000000000000000-0000000000000000-01", "00-zz-yy-01", "ff-" + "a" * 60],
)
async def test_a_malformed_traceparent_starts_a_new_trace(spans: InMemorySpanExporter, traceparent: str) -> None:
    async with InMemoryBroker() as broker:
        handled = asyncio.Event()

        async def handler(message: Message) -> None:
            handled.set()

        await broker.subscribe("bad.trace", handler)
        await broker.publish("bad.trace", Message(b"x", headers={"traceparent": traceparent}))
        await asyncio.wait_for(handled.wait(), 5)
        await broker.wait_until_idle()
    publish, process = spans.get_finished_spans()
    assert process.attributes["messaging.nats.outcome"] == "ack"  # type: ignore[index]
    # The publish span replaced the bad header with its own context, so the trace goes on from it.
    assert process.parent is not None and process.parent.span_id == publish.context.span_id


async def test_a_malformed_traceparent_as_stored_never_fails_the_handler(spans: InMemorySpanExporter) -> None:
    # Published by another client: the header reaches the consumer as that client wrote it.
    async with InMemoryBroker() as broker:
        outcomes: list[int] = []

        async def handler(message: Message) -> None:
            outcomes.append(message.attempt)

        await broker.subscribe("raw.trace", handler)
        # The front would overwrite traceparent: store straight through the backend, as a foreign client.
        await broker._backend.store(
            Outgoing("raw.trace", b"x", {"traceparent": "00-zz-yy-01", "Nats-Msg-Id": "raw-1"}), 5
        )
        await broker.wait_until_idle()
    (process,) = [s for s in spans.get_finished_spans() if s.name == "process raw.trace"]
    assert outcomes == [1]
    assert process.parent is None  # a new trace
    assert process.attributes["messaging.nats.outcome"] == "ack"  # type: ignore[index]


async def test_tracing_false_records_no_span(spans: InMemorySpanExporter) -> None:
    async with InMemoryBroker(tracing=False) as broker:
        await broker.subscribe("quiet", _noop)
        await broker.publish("quiet", b"x")
        await broker.wait_until_idle()
    assert spans.get_finished_spans() == ()


def test_tracing_must_be_a_bool() -> None:
    with pytest.raises(InvalidArgumentError, match="tracing must be True or False"):
        InMemoryBroker(tracing="yes")  # type: ignore[arg-type]


async def _noop(message: Message) -> None:
    return None


# -- logs --------------------------------------------------------------------------------------


async def test_log_records_about_a_message_carry_its_fields(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    async with InMemoryBroker(max_deliver=1) as broker:

        async def handler(message: Message) -> None:
            raise Reject("bad order")

        await broker.subscribe("logged", handler, queue="loggers")
        with caplog.at_level(logging.WARNING, logger="jetstream_fastapi"):
            ack = await broker.publish("logged", b"x", msg_id="id-1")
            await broker.wait_until_idle()
    (record,) = [r for r in caplog.records if "rejected" in r.getMessage()]
    (process,) = [s for s in spans.get_finished_spans() if s.name == "process logged"]
    fields = {name: getattr(record, name) for name in ("stream", "sequence", "consumer", "attempt", "msg_id")}
    assert fields == {"stream": ack.stream, "sequence": ack.seq, "consumer": "loggers", "attempt": 1, "msg_id": "id-1"}
    assert record.trace_id == format(process.context.trace_id, "032x")  # type: ignore[attr-defined]


# -- metrics -----------------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)


async def test_metrics_after_a_known_workload(make_broker: BrokerFactory) -> None:
    broker = await make_broker(max_deliver=3, backoff=FAST_BACKOFF)
    token = uuid.uuid4().hex[:8]
    subject, queue = f"work{token}.>", f"workers{token}"
    router = ConsumerRouter()

    @router.handle(subject, queue=queue)
    async def work(message: Message) -> None:
        kind = message.subject.rsplit(".", 1)[1]
        if kind == "poison":
            raise Reject("poison")
        if kind == "flaky" and message.attempt == 1:
            raise RuntimeError("first attempt fails")

    app = FastAPI(lifespan=jetstream_lifespan(broker, router))
    app.include_router(metrics_router())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metrics.test") as client:
            for kind, count in (("ok", 5), ("flaky", 2), ("poison", 1)):
                for _ in range(count):
                    await broker.publish(f"work{token}.{kind}", b"{}")
            await broker.wait_until_idle()
            response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    group = {"messaging_destination_name": subject, "messaging_consumer_group_name": queue}
    # 8 messages, 2 of them delivered twice: 10 handler runs.
    assert _value(samples, "messaging_client_consumed_messages_total", **group) == 10
    assert _value(samples, "messaging_process_duration_seconds_count", outcome="ack", **group) == 7
    assert _value(samples, "messaging_process_duration_seconds_count", outcome="nak", **group) == 2
    assert _value(samples, "messaging_process_duration_seconds_count", outcome="dead_letter", **group) == 1
    assert _value(samples, "jetstream_consumer_redeliveries_total", **group) == 2
    assert _value(samples, "jetstream_dead_letters_total", error_type="Reject", **group) == 1
    assert _value(samples, "messaging_client_sent_messages_total", messaging_destination_name=f"work{token}.ok") == 5
    count = "messaging_client_operation_duration_seconds_count"
    assert _value(samples, count, messaging_destination_name=f"work{token}.flaky", error_type="") == 2
    assert _value(samples, "jetstream_consumer_pending_messages", consumer=queue) == 0
    assert _value(samples, "jetstream_consumer_ack_pending_messages", consumer=queue) == 0
    assert _value(samples, "jetstream_consumer_pending_messages", **group) == 0  # labelled by subject and queue too
    assert _value(samples, "jetstream_handlers_in_flight", consumer=queue) == 0
    assert _value(samples, "jetstream_up") == 1


async def test_lag_is_read_at_scrape_time(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    token = uuid.uuid4().hex[:8]
    release = asyncio.Event()

    async def blocked(message: Message) -> None:
        await release.wait()

    sub = await broker.subscribe(f"lag{token}", blocked, queue=f"lag{token}", concurrency=1)
    for _ in range(4):
        await broker.publish(f"lag{token}", b"x")
    app = FastAPI()
    app.include_router(metrics_router(broker=broker))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics.test") as client:

        async def lagging() -> None:
            samples = _samples((await client.get("/metrics")).text)
            assert _value(samples, "jetstream_consumer_ack_pending_messages", consumer=sub.consumer_name) == 1
            assert _value(samples, "jetstream_consumer_pending_messages", consumer=sub.consumer_name) == 3
            assert _value(samples, "jetstream_handlers_in_flight", consumer=sub.consumer_name) == 1

        await eventually(lagging, timeout=10)
    release.set()
    await broker.wait_until_idle()


async def test_a_scrape_while_nats_is_down_answers_with_the_last_figures(fresh_server: NatsServer) -> None:
    broker = JetStreamBroker(fresh_server.url, fetch_wait=1.0, reconnect_time_wait=0.2)
    queue = f"down{uuid.uuid4().hex[:8]}"
    app = FastAPI(lifespan=jetstream_lifespan(broker))
    app.include_router(metrics_router())
    async with LifespanManager(app) as manager:
        await broker.subscribe("down.x", _noop, queue=queue)
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metrics.test") as client:
            before = _samples((await client.get("/metrics")).text)
            assert _value(before, "jetstream_up") == 1
            fresh_server.stop(remove_store=False)

            async def down() -> None:
                assert not broker.is_connected

            await eventually(down)
            response = await client.get("/metrics")
            assert response.status_code == 200
            after = _samples(response.text)
            assert _value(after, "jetstream_up") == 0
            # The last known consumer figures are still there.
            assert "jetstream_consumer_pending_messages" in {name for name, _ in after}
            assert _value(after, "jetstream_consumer_pending_messages", consumer=queue) == 0
            assert _value(after, "jetstream_connection_reconnects_total") == 0
            fresh_server.start()  # same port: the connection comes back

            async def reconnected() -> None:
                samples = _samples((await client.get("/metrics")).text)
                assert _value(samples, "jetstream_connection_reconnects_total") == 1
                assert _value(samples, "jetstream_up") == 1

            await eventually(reconnected, timeout=15)


def test_metrics_router_without_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from jetstream_fastapi.observability import metrics

    monkeypatch.setattr(metrics, "PROMETHEUS", False)
    with pytest.raises(ModuleNotFoundError, match=r"jetstream-fastapi\[metrics\]"):
        metrics_router()


async def test_a_handler_that_publishes_continues_the_trace(spans: InMemorySpanExporter) -> None:
    async with InMemoryBroker() as broker:

        async def first(message: Message) -> None:
            await broker.publish("chain.second", b"next")

        await broker.subscribe("chain.first", first)
        await broker.subscribe("chain.second", _noop)
        await broker.publish("chain.first", b"start")
        await broker.wait_until_idle()
    by_name = {span.name: span for span in spans.get_finished_spans()}
    assert set(by_name) == {
        "publish chain.first",
        "process chain.first",
        "publish chain.second",
        "process chain.second",
    }
    assert len({span.context.trace_id for span in by_name.values()}) == 1
    second = by_name["publish chain.second"]
    assert second.parent is not None and second.parent.span_id == by_name["process chain.first"].context.span_id


@pytest.mark.parametrize("options", [{"tracing": False, "metrics": False}, {"tracing": True, "metrics": True}])
async def test_publish_and_consume_on_either_path(make_broker: BrokerFactory, options: dict[str, bool]) -> None:
    # With both off the broker takes its plain path (no observer): the same results.
    broker = await make_broker(**options)
    assert (broker._observer is None) is (not options["tracing"])
    subject = f"paths.{uuid.uuid4().hex[:8]}"
    handled: list[bytes] = []

    async def handler(message: Message) -> None:
        handled.append(message.body)

    await broker.subscribe(subject, handler, queue=f"p{uuid.uuid4().hex[:8]}")
    acks = await broker.publish_many([(subject, b"a"), (subject, b"b")])
    ack = await broker.publish(subject, b"c")
    await broker.wait_until_idle()
    first = acks[0].seq
    assert [a.seq for a in acks] + [ack.seq] == [first, first + 1, first + 2]
    assert sorted(handled) == [b"a", b"b", b"c"]


async def test_a_request_is_traced_as_a_publish_whose_handler_span_is_its_child(spans: InMemorySpanExporter) -> None:
    async with InMemoryBroker() as broker:

        async def handler(message: Message) -> bytes:
            return b"answer"

        await broker.subscribe("traced.request", handler, queue="answerer")
        assert (await broker.request("traced.request", b"x", timeout=5.0)).body == b"answer"
        await broker.wait_until_idle()
    publish, process = spans.get_finished_spans()
    assert publish.kind is trace.SpanKind.PRODUCER and publish.name == "publish traced.request"
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    assert process.attributes["messaging.nats.outcome"] == "ack"  # type: ignore[index]


async def test_the_outbox_figures_at_scrape_time(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    from nats.js.api import StreamConfig
    from sqlalchemy import update
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from jetstream_fastapi.outbox import Outbox

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    outbox = Outbox(engine, poll_interval=0.5, lease_ttl=2.0)
    await outbox.create_tables()
    received = asyncio.Event()

    async def handler(message: Message) -> None:
        received.set()

    broker = InMemoryBroker(auto_provision=False, streams=[StreamConfig(name="SHOP", subjects=["shop.>"])])
    app = FastAPI(lifespan=jetstream_lifespan(broker, outbox=outbox))
    app.include_router(metrics_router())
    async with LifespanManager(app) as manager:
        await broker.subscribe("shop.>", handler, queue="shop")
        async with AsyncSession(engine) as session, session.begin():
            await outbox.publish(session, "nowhere.created", "refused for good", key="a")  # dead-lettered
            await outbox.publish(session, "shop.created", "stored", key="a")
        await received.wait()

        async def relayed() -> None:
            assert (await outbox.stats()).backlog == 0

        await eventually(relayed)  # the row is deleted after its PubAck: the table signals nothing
        broker.faults.drop_connection()  # what comes next waits in the table
        async with AsyncSession(engine) as session, session.begin():
            await outbox.publish(session, "shop.created", "waiting")
            failing = await outbox.publish(session, "shop.created", "failed")
        table = outbox.tables.messages
        async with engine.begin() as connection:  # as a relay leaves a row it could not even dead-letter
            await connection.execute(update(table).where(table.c.msg_id == failing).values(failed="Boom: no"))
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metrics.test") as client:
            samples = _samples((await client.get("/metrics")).text)
        broker.faults.restore_connection()
    await engine.dispose()
    labels = {"outbox": "jetstream_outbox"}
    assert _value(samples, "jetstream_outbox_up", **labels) == 1
    assert _value(samples, "jetstream_outbox_backlog_messages", **labels) == 1
    assert _value(samples, "jetstream_outbox_failed_messages", **labels) == 1
    assert _value(samples, "jetstream_outbox_oldest_age_seconds", **labels) >= 0
    assert _value(samples, "jetstream_outbox_published_messages_total", **labels) == 1
    assert _value(samples, "jetstream_outbox_dead_letters_total", **labels) == 1
    assert _value(samples, "jetstream_outbox_failures_total", **labels) == 0


class _FakeSpans:
    """The tracing module's part a ConsumerWatch calls, with an SDK that the test sets."""

    def __init__(self) -> None:
        self.sdk = False
        self.looks = 0
        self.ended: list[str] = []

    def active(self) -> bool:
        self.looks += 1
        return self.sdk

    def start_process(self, message: Message, subject: str, queue: str | None) -> tuple[str, None]:
        return f"process {subject}", None

    def end_process(self, span: str, token: object, outcome: str, delay: float, error: BaseException | None) -> None:
        self.ended.append(f"{span}: {outcome}")


def test_a_watch_without_an_sdk_asks_once_a_second_and_traces_once_one_is_set() -> None:
    from jetstream_fastapi.core.handling import ACKED
    from jetstream_fastapi.observability.hooks import ConsumerWatch, Observer

    watch = ConsumerWatch(Observer(tracing=False, recording=False), "orders.new", "workers")
    fake = _FakeSpans()
    watch._spans = fake  # the tracing module, as with tracing=True and opentelemetry-api installed
    message = Message(b"{}", {}, "orders.new")
    for _ in range(3):
        watch.finish(watch.start(message), message, ACKED, True)
    assert (fake.looks, fake.ended) == (1, [])  # asked at the first message only, nothing recorded
    fake.sdk = True
    watch._next_look = 0.0  # a second later
    watch.finish(watch.start(message), message, ACKED, True)
    watch.finish(watch.start(message), message, ACKED, True)
    assert fake.looks == 2  # seen once, it stays
    assert fake.ended == ["process orders.new: ack", "process orders.new: ack"]
