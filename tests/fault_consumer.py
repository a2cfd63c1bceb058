"""Consumer processes for tests/test_faults_process.py: run as a script, never imported by pytest.

``python tests/fault_consumer.py hold <nats-url> <subject>``
    Consumes ``subject`` on queue ``shared`` (ack wait 2 s, 5 handlers) with a handler that prints
    ``HOLD <id> <attempt> <seq>`` and then blocks for ever: it holds its messages unacked until killed.

``python tests/fault_consumer.py work <nats-url> <subject>``
    Consumes ``subject`` on queue ``churn`` (ack wait 1 s, 4 handlers of ~5 ms) and prints
    ``DONE <id> <attempt> <seq>`` after each handler, before its ack: killed at any moment, it leaves
    processed-but-unacked messages behind, as a crash does.

``python tests/fault_consumer.py app`` (environment: ``NATS_URL``, ``PORT``, ``SUBJECT``)
    Serves a FastAPI app under uvicorn whose consumer (queue ``rolling``, 8 handlers, ~200 ms each) prints
    ``START <id> <attempt> <seq>`` and ``DONE <id> <attempt> <seq>``. SIGTERM shuts it down gracefully and
    exits with status 0, as ``python -m example_app`` does.

Every line is flushed at once, so the test reads it as soon as it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from types import FrameType

from fastapi import FastAPI

from jetstream_fastapi import ConsumerRouter, JetStreamBroker, Message, jetstream_lifespan

HOLD_CONCURRENCY = 5
HOLD_ACK_WAIT = 2.0
WORK_ACK_WAIT = 1.0
ROLLING_CONCURRENCY = 8
ROLLING_HANDLER_SECONDS = 0.2
ROLLING_SHUTDOWN_TIMEOUT = 5.0


def say(*words: object) -> None:
    print(*words, flush=True)


def describe(msg: Message) -> str:
    assert msg.delivery is not None
    return f"{msg.body.decode()} {msg.delivery.attempt} {msg.delivery.sequence}"


async def hold(url: str, subject: str) -> None:
    broker = JetStreamBroker(
        url, ack_wait=HOLD_ACK_WAIT, concurrency=HOLD_CONCURRENCY, batch_size=HOLD_CONCURRENCY, fetch_wait=1.0
    )
    await broker.connect()
    never = asyncio.Event()

    async def handler(msg: Message) -> None:
        say("HOLD", describe(msg))
        await never.wait()  # holds the message (unacked) until the process dies

    await broker.subscribe(subject, handler, queue="shared")
    say("READY")
    await never.wait()


async def work(url: str, subject: str) -> None:
    broker = JetStreamBroker(url, ack_wait=WORK_ACK_WAIT, concurrency=4, batch_size=4, fetch_wait=1.0)
    await broker.connect()

    async def handler(msg: Message) -> None:
        await asyncio.sleep(0.005)
        say("DONE", describe(msg))

    await broker.subscribe(subject, handler, queue="churn")
    say("READY")
    await asyncio.Event().wait()


def create_app(url: str, subject: str) -> FastAPI:
    broker = JetStreamBroker(url, shutdown_timeout=ROLLING_SHUTDOWN_TIMEOUT, fetch_wait=1.0)
    router = ConsumerRouter()

    @router.handle(subject, queue="rolling", concurrency=ROLLING_CONCURRENCY, batch_size=ROLLING_CONCURRENCY)
    async def work(msg: Message) -> None:
        say("START", describe(msg))
        await asyncio.sleep(ROLLING_HANDLER_SECONDS)  # the work itself
        say("DONE", describe(msg))

    return FastAPI(lifespan=jetstream_lifespan(broker, router))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with this handler back in place.
    raise KeyboardInterrupt


def serve_app() -> None:
    import uvicorn

    app = create_app(os.environ["NATS_URL"], os.environ["SUBJECT"])
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="info")
    say("EXITED")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "hold":
        asyncio.run(hold(sys.argv[2], sys.argv[3]))
    elif mode == "work":
        asyncio.run(work(sys.argv[2], sys.argv[3]))
    elif mode == "app":
        serve_app()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
