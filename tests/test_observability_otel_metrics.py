"""The same instruments through the OpenTelemetry metrics API, for OTLP users: in a process of its own,
since a process has one global meter provider and the broker looks for it when the instruments are made."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import asyncio, json
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

from jetstream_fastapi import InMemoryBroker, Reject

def collect():
    found = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = point.count
                    key = metric.name + "|" + ",".join(f"{k}={v}" for k, v in sorted(point.attributes.items()))
                    found[key] = value
    return found

async def main():
    async with InMemoryBroker(max_deliver=1) as broker:
        async def handler(message):
            if message.body == b"bad":
                raise Reject("bad")
        await broker.subscribe("otel.x", handler, queue="otel")
        for body in (b"ok", b"ok", b"bad"):
            await broker.publish("otel.x", body)
        await broker.wait_until_idle()
        release = asyncio.Event()
        async def blocked(message):
            await release.wait()
        await broker.subscribe("otel.lag", blocked, queue="lag", concurrency=1)
        for _ in range(3):
            await broker.publish("otel.lag", b"x")
        # The observable gauges read the last known figures and ask for a refresh: collect until it shows.
        wanted = {"jetstream.consumer.pending_messages": 2, "jetstream.consumer.ack_pending_messages": 1,
                  "jetstream.handlers.in_flight": 1}
        for _ in range(200):
            gauges = {k.split("|")[0]: v for k, v in collect().items() if "messaging.nats.consumer=lag" in k}
            if all(gauges.get(name) == value for name, value in wanted.items()):
                break
            await asyncio.sleep(0.02)
        found = collect()
        found["lag"] = gauges
        release.set()
        await broker.wait_until_idle()
    print(json.dumps(found))

asyncio.run(main())
"""


def _key(name: str, **attributes: str) -> str:
    return name + "|" + ",".join(f"{k}={v}" for k, v in sorted(attributes.items()))


def test_the_instruments_record_through_an_sdk_meter_provider() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60).stdout
    found: dict[str, object] = json.loads(out)
    group = {
        "messaging.system": "nats",
        "messaging.destination.name": "otel.x",
        "messaging.consumer.group.name": "otel",
    }
    assert found[_key("messaging.client.consumed.messages", **group)] == 3
    ack = {**group, "messaging.nats.outcome": "ack"}
    dead = {**group, "messaging.nats.outcome": "dead_letter"}
    assert found[_key("messaging.process.duration", **ack)] == 2
    assert found[_key("messaging.process.duration", **dead)] == 1
    assert found[_key("jetstream.dead_letters", **group, **{"error.type": "Reject"})] == 1
    sent = {"messaging.system": "nats", "messaging.destination.name": "otel.x"}
    assert found[_key("messaging.client.sent.messages", **sent)] == 3
    # The scrape-time figures through observable instruments.
    assert found["lag"] == {
        "jetstream.consumer.pending_messages": 2,
        "jetstream.consumer.ack_pending_messages": 1,
        "jetstream.handlers.in_flight": 1,
    }
    assert found["jetstream.up|"] == 1
    assert found["jetstream.connection.reconnects|"] == 0


OUTBOX_SCRIPT = """
import asyncio, json, sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

from fastapi import FastAPI
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from jetstream_fastapi import InMemoryBroker, jetstream_lifespan
from jetstream_fastapi.outbox import Outbox

def collect():
    found = {}
    data = reader.get_metrics_data()
    for resource in (data.resource_metrics if data else []):
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name.startswith("jetstream.outbox."):
                    for point in metric.data.data_points:
                        found[metric.name] = point.value
    return found

async def main():
    engine = create_async_engine("sqlite+aiosqlite:///" + sys.argv[1])
    outbox = Outbox(engine, poll_interval=0.5, lease_ttl=2.0)
    await outbox.create_tables()
    broker = InMemoryBroker()
    async with LifespanManager(FastAPI(lifespan=jetstream_lifespan(broker, outbox=outbox))):
        got = asyncio.Event()
        async def handler(message):
            got.set()
        await broker.subscribe("otel.outbox", handler, queue="q")
        async with AsyncSession(engine) as session, session.begin():
            await outbox.publish(session, "otel.outbox", "sent")
        await got.wait()
        broker.faults.drop_connection()
        async with AsyncSession(engine) as session, session.begin():
            await outbox.publish(session, "otel.outbox", "waiting")
        # The gauges read the last known figures and ask for a refresh: collect until it shows.
        for _ in range(200):
            found = collect()
            if found.get("jetstream.outbox.backlog") == 1 and found.get("jetstream.outbox.published") == 1:
                break
            await asyncio.sleep(0.02)
        broker.faults.restore_connection()
    await engine.dispose()
    print(json.dumps(found))

asyncio.run(main())
"""


def test_the_outbox_figures_through_an_sdk_meter_provider(tmp_path: object) -> None:
    database = str(tmp_path) + "/app.db"
    run = subprocess.run([sys.executable, "-c", OUTBOX_SCRIPT, database], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["jetstream.outbox.backlog"] == 1
    assert found["jetstream.outbox.failed"] == 0
    assert found["jetstream.outbox.oldest_age"] >= 0
    assert found["jetstream.outbox.published"] == 1
    assert found["jetstream.outbox.dead_letters"] == 0
