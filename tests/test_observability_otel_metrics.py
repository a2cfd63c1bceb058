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

async def main():
    async with InMemoryBroker(max_deliver=1) as broker:
        async def handler(message):
            if message.body == b"bad":
                raise Reject("bad")
        await broker.subscribe("otel.x", handler, queue="otel")
        for body in (b"ok", b"ok", b"bad"):
            await broker.publish("otel.x", body)
        await broker.wait_until_idle()
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
    print(json.dumps(found))

asyncio.run(main())
"""


def _key(name: str, **attributes: str) -> str:
    return name + "|" + ",".join(f"{k}={v}" for k, v in sorted(attributes.items()))


def test_the_instruments_record_through_an_sdk_meter_provider() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60).stdout
    found: dict[str, float] = json.loads(out)
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
