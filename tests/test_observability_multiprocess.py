"""Several uvicorn workers: with ``PROMETHEUS_MULTIPROC_DIR`` set, a scrape sums what every worker process
recorded (prometheus_client's multiprocess mode), derived counters included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

WORKER = """
import asyncio
from jetstream_fastapi import InMemoryBroker, Reject

async def main():
    async with InMemoryBroker(max_deliver=1) as broker:
        async def handler(message):
            if message.body == b"bad":
                raise Reject("bad")
        await broker.subscribe("mp.x", handler, queue="mp")
        for body in (b"ok", b"ok", b"bad"):
            await broker.publish("mp.x", body)
        await broker.wait_until_idle()

asyncio.run(main())
"""

SCRAPER = """
import asyncio, httpx
from fastapi import FastAPI
from jetstream_fastapi import metrics_router

async def main():
    app = FastAPI()
    app.include_router(metrics_router())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m.test") as client:
        print((await client.get("/metrics")).text)

asyncio.run(main())
"""


def _run(script: str, directory: Path) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60, env=env
    ).stdout


def test_a_scrape_sums_every_worker(tmp_path: Path) -> None:
    for _ in range(2):  # two workers, one after the other, each with its own files in the directory
        _run(WORKER, tmp_path)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(_run(SCRAPER, tmp_path))
        for sample in family.samples
    }

    def total(name: str, **labels: str) -> float:
        return sum(v for (n, have), v in samples.items() if n == name and set(labels.items()) <= set(have))

    group = {"messaging_destination_name": "mp.x", "messaging_consumer_group_name": "mp"}
    assert total("messaging_client_consumed_messages_total", **group) == 6
    assert total("messaging_process_duration_seconds_count", outcome="ack", **group) == 4
    assert total("messaging_process_duration_seconds_count", outcome="dead_letter", **group) == 2
    assert total("jetstream_dead_letters_total", error_type="Reject", **group) == 2
    assert total("messaging_client_sent_messages_total", messaging_destination_name="mp.x", error_type="") == 6
