"""Several worker processes of one app (issue #15): a handler without a queue is warned about at startup
when this process is one of several; a real ``uvicorn --workers 4`` shows the warning in each worker,
for the queue-less handler only; four workers share a queue, and a SIGTERM to one of them under load
loses nothing and handles nothing twice."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from jetstream_fastapi import ConsumerRouter, InMemoryBroker, JetStreamBroker, Message, jetstream_lifespan
from jetstream_fastapi.integration.workers import several_processes
from jetstream_fastapi.server import NatsServer

ROOT = Path(__file__).parent.parent
BOUND = 60.0
WORKERS = 4


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["uvicorn", "app:app", "--workers", "4"], {}, "--workers 4"),
        (["uvicorn", "app:app", "--workers=2"], {}, "--workers 2"),
        (["uvicorn", "app:app", "--workers", "1"], {}, None),
        (["uvicorn", "app:app", "--reload"], {}, None),
        (["gunicorn", "app:app"], {"WEB_CONCURRENCY": "3"}, "WEB_CONCURRENCY=3"),
        (["gunicorn", "app:app"], {"WEB_CONCURRENCY": "1"}, None),
        (["python", "-m", "app"], {}, None),
    ],
)
def test_several_processes_reads_the_command_line_and_web_concurrency(
    argv: list[str], environ: dict[str, str], expected: str | None
) -> None:
    assert several_processes(argv, environ) == expected


async def test_the_lifespan_warns_about_a_handler_without_a_queue_under_several_workers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    router = ConsumerRouter()

    async def handler(msg: Message) -> None: ...

    router.handle("cache.refresh")(handler)
    router.handle("orders.created", queue="orders")(handler)
    lifespan = jetstream_lifespan(InMemoryBroker(), router)
    caplog.set_level(logging.WARNING, "jetstream_fastapi")
    async with lifespan(None):
        pass
    assert not [r for r in caplog.records if "has no queue" in r.getMessage()]  # one process: no warning
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    async with lifespan(None):
        pass
    warned = [r.getMessage() for r in caplog.records if "has no queue" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("cache.refresh has no queue") and "WEB_CONCURRENCY=4" in warned[0]


async def test_the_lifespan_warns_that_a_handler_without_a_queue_misses_what_was_published_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = ConsumerRouter()

    async def handler(msg: Message) -> None: ...

    router.handle("cache.refresh")(handler)
    router.handle("prices.live", deliver_policy="new")(handler)  # said on purpose: no warning
    router.handle("orders.created", queue="orders")(handler)
    caplog.set_level(logging.WARNING, "jetstream_fastapi")
    async with jetstream_lifespan(InMemoryBroker(), router)(None):
        pass
    warned = [r.getMessage() for r in caplog.records if "without a queue" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith("cache.refresh is handled without a queue")
    assert "published while the app was down" in warned[0] and "queue=" in warned[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_four_uvicorn_workers_share_a_queue_and_one_stops_gracefully(
    nats_server: NatsServer, prefix: str
) -> None:
    # Each worker warns about the queue-less handler; the queue's messages are shared by the workers; a
    # SIGTERM to one worker mid-load (uvicorn starts another) loses nothing and handles nothing twice.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "tests.workers_app:app",
        "--workers",
        str(WORKERS),
        "--host",
        "127.0.0.1",
        "--port",
        str(_free_port()),
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "NATS_URL": nats_server.url, "SUBJECT": prefix},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    changed = asyncio.Condition()

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            async with changed:
                lines.append(raw.decode())
                changed.notify_all()

    def count(word: str) -> int:
        return sum(word in line for line in lines)

    def done() -> list[list[str]]:
        return [line.split() for line in lines if line.startswith("DONE ")]

    async def until(check: Callable[[], bool]) -> None:
        async with asyncio.timeout(BOUND), changed:
            await changed.wait_for(check)

    reader = asyncio.ensure_future(read())
    publisher = JetStreamBroker(nats_server.url)
    try:
        await until(lambda: count("Application startup complete") >= WORKERS)
        await publisher.connect()
        total = 600
        await publisher.publish_many((f"{prefix}.shared", str(n)) for n in range(total))
        await until(lambda: len({words[1] for words in done()}) >= 2 and len(done()) >= 100)
        stopped = done()[-1][1]
        os.kill(int(stopped), signal.SIGTERM)
        await until(lambda: len({words[2] for words in done()}) >= total)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), BOUND)
        await reader
        await publisher.disconnect()
    warned = [line for line in lines if "has no queue" in line]
    handled = Counter(words[2] for words in done())
    by_worker = Counter(words[1] for words in done())
    duplicates = sum(n - 1 for n in handled.values())
    lost = total - len(handled)
    print(
        f"\n{WORKERS} workers: {total} published, handled per worker {dict(by_worker)}; SIGTERM to {stopped}; "
        f"lost {lost}, duplicates {duplicates}; {len(warned)} warnings for the handler without a queue"
    )
    assert len(warned) >= WORKERS
    assert all(line.startswith(f"{prefix}.each has no queue") and f"--workers {WORKERS}" in line for line in warned)
    assert lost == 0 and duplicates == 0
    assert len(by_worker) > 1
