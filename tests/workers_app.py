"""An app for tests/test_workers.py, served by ``uvicorn --workers 2``; never imported by pytest itself.

Environment: ``NATS_URL``, ``SUBJECT``. One handler on ``<SUBJECT>.each`` without a queue (every worker
gets every message: warned about at startup) and one on ``<SUBJECT>.shared`` with a queue (not warned).
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from jetstream_fastapi import ConsumerRouter, JetStreamBroker, Message, jetstream_lifespan

subject = os.environ["SUBJECT"]
router = ConsumerRouter()


@router.handle(f"{subject}.each")
async def each(msg: Message) -> None: ...


@router.handle(f"{subject}.shared", queue="shared")
async def shared(msg: Message) -> None: ...


app = FastAPI(lifespan=jetstream_lifespan(JetStreamBroker(os.environ["NATS_URL"]), router))
