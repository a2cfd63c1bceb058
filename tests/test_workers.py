"""Several worker processes of one app (issue #15): a handler without a queue is warned about at startup
when this process is one of several; a real ``uvicorn --workers 2`` shows the warning once per worker,
for the queue-less handler only."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from jetstream_fastapi import ConsumerRouter, InMemoryBroker, Message, jetstream_lifespan
from jetstream_fastapi.integration.workers import several_processes
from jetstream_fastapi.server import NatsServer

ROOT = Path(__file__).parent.parent
BOUND = 30.0


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_uvicorn_workers_each_warn_about_the_handler_without_a_queue(
    nats_server: NatsServer, prefix: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "tests.workers_app:app",
        "--workers",
        "2",
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
    try:
        assert process.stdout is not None
        async with asyncio.timeout(BOUND):
            while sum("Application startup complete" in line for line in lines) < 2:
                raw = await process.stdout.readline()
                assert raw, f"uvicorn ended early: {lines}"
                lines.append(raw.decode())
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(process.communicate(), BOUND)
        lines += rest.decode().splitlines()
    warned = [line for line in lines if "has no queue" in line]
    print("\n" + "".join(warned))
    assert len(warned) == 2, lines
    assert all(line.startswith(f"{prefix}.each has no queue") and "--workers 2" in line for line in warned)
