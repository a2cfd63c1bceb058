"""The README's HTTP publish route, three ways, served by uvicorn (one worker) in its own process.

Usage (``bench/http_route.py`` starts it)::

    http_app.py {ours|raw|raw_depends|faststream} NATS_URL STREAM SUBJECT PORT {asyncio|uvloop} {h11|httptools}

Each app has one route, ``POST /orders``, the one in the README's Usage section: it validates an
``Order`` JSON body, publishes ``order.model_dump_json()`` to ``SUBJECT``, waits for the PubAck and
answers 202 with ``{"stream": ..., "seq": ...}``. Each library's client is reached the fastest way its
users write it: ours exactly as the README shows (``jetstream_lifespan`` + ``Depends(get_broker)``),
raw nats-py from ``request.app.state`` (set by a few lines of lifespan), FastStream through an
``async def`` dependency (a plain ``def`` one would cost every request a thread-pool hop).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import nats
import uvicorn
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

from jetstream_fastapi import Broker, JetStreamBroker, Message, get_broker, jetstream_lifespan


class Order(BaseModel):
    id: str
    quantity: int


def ours_app(url: str, stream: str, subject: str) -> FastAPI:
    app = FastAPI(lifespan=jetstream_lifespan(JetStreamBroker(url)))

    @app.post("/orders", status_code=202)
    async def create(order: Order, broker: Broker = Depends(get_broker)) -> dict[str, object]:
        ack = await broker.publish(subject, Message(body=order.model_dump_json().encode()))
        return {"stream": ack.stream, "seq": ack.seq}

    return app


def raw_lifespan(url: str) -> Any:
    """A few lines of lifespan putting nats-py's JetStream context on ``app.state.js``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await nats.connect(url)
        app.state.js = nc.jetstream()
        try:
            yield
        finally:
            await nc.drain()

    return lifespan


def raw_app(url: str, stream: str, subject: str) -> FastAPI:
    app = FastAPI(lifespan=raw_lifespan(url))

    @app.post("/orders", status_code=202)
    async def create(order: Order, request: Request) -> dict[str, object]:
        ack = await request.app.state.js.publish(subject, order.model_dump_json().encode())
        return {"stream": ack.stream, "seq": ack.seq}

    return app


def raw_depends_app(url: str, stream: str, subject: str) -> FastAPI:
    """The control: raw nats-py reached through an ``async def`` dependency, the shape of ours' route, so
    that the table shows what FastAPI's solving of one ``Depends`` costs apart from either client."""
    app = FastAPI(lifespan=raw_lifespan(url))

    async def get_js(request: Request) -> Any:
        return request.app.state.js

    @app.post("/orders", status_code=202)
    async def create(order: Order, js: Any = Depends(get_js)) -> dict[str, object]:
        ack = await js.publish(subject, order.model_dump_json().encode())
        return {"stream": ack.stream, "seq": ack.seq}

    return app


def faststream_app(url: str, stream: str, subject: str) -> FastAPI:
    from faststream.nats import NatsBroker

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        broker = NatsBroker(url, logger=None)
        await broker.start()
        app.state.faststream = broker
        try:
            yield
        finally:
            await broker.stop()

    async def get_faststream(request: Request) -> Any:
        return request.app.state.faststream

    app = FastAPI(lifespan=lifespan)

    @app.post("/orders", status_code=202)
    async def create(order: Order, broker: Any = Depends(get_faststream)) -> dict[str, object]:
        # stream= makes FastStream wait for the PubAck; its 0.5 s default timeout is raised to ours' 5 s.
        ack = await broker.publish(order.model_dump_json().encode(), subject, stream=stream, timeout=5.0)
        return {"stream": ack.stream, "seq": ack.seq}

    return app


APPS = {"ours": ours_app, "raw": raw_app, "raw_depends": raw_depends_app, "faststream": faststream_app}


def main(argv: list[str]) -> None:
    impl, url, stream, subject, port, loop, http = argv
    app = APPS[impl](url, stream, subject)
    uvicorn.run(app, host="127.0.0.1", port=int(port), loop=loop, http=http, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
