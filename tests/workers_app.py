"""An app for tests/test_workers.py, served by ``uvicorn --workers 4``; never imported by pytest itself.

Environment: ``NATS_URL``, ``SUBJECT``. One handler on ``<SUBJECT>.each`` without a queue (every worker
gets every message: warned about at startup) and one on ``<SUBJECT>.shared`` with a queue (not warned),
which prints ``START <pid> <body> <attempt>`` and ``DONE <pid> <body> <attempt>`` around ~20 ms of work.
SIGTERM to a worker stops it gracefully (uvicorn's supervisor then starts a new one).
"""

from __future__ import annotations

import asyncio
import os
import sys

from fastapi import FastAPI

from jetstream_fastapi import ConsumerRouter, JetStreamBroker, Message, jetstream_lifespan

subject = os.environ["SUBJECT"]
router = ConsumerRouter()


def say(*words: object) -> None:
    # One write per line: four processes share the pipe, and separate writes of the words would interleave.
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()


@router.handle(f"{subject}.each")
async def each(msg: Message) -> None: ...


@router.handle(f"{subject}.shared", queue="shared", concurrency=4, batch_size=4)
async def shared(msg: Message) -> None:
    say("START", os.getpid(), msg.body.decode(), msg.attempt)
    await asyncio.sleep(0.02)
    say("DONE", os.getpid(), msg.body.decode(), msg.attempt)


broker = JetStreamBroker(os.environ["NATS_URL"], fetch_wait=1.0, shutdown_timeout=5.0)
app = FastAPI(lifespan=jetstream_lifespan(broker, router))
