"""The HTTP publish route, three ways, served by uvicorn (one worker) in its own process.

Usage (``bench/http_route.py`` starts it)::

    http_app.py {ours|raw|faststream} NATS_URL STREAM SUBJECT PORT {asyncio|uvloop} {h11|httptools}

Each app has one route, ``POST /publish``: it reads the request body, publishes it to ``SUBJECT``,
waits for the PubAck and answers 202 with ``{"seq": ...}``. The client comes from the lifespan state
through a ``Depends`` in all three: ours is ``jetstream_lifespan`` + ``get_broker``; raw nats-py and
FastStream get the same few lines of lifespan by hand.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import nats
import uvicorn
from fastapi import Depends, FastAPI, Request
from nats.js import JetStreamContext

from jetstream_fastapi import Broker, JetStreamBroker, get_broker, jetstream_lifespan


def ours_app(url: str, stream: str, subject: str) -> FastAPI:
    app = FastAPI(lifespan=jetstream_lifespan(JetStreamBroker(url)))

    @app.post("/publish", status_code=202)
    async def publish(request: Request, broker: Broker = Depends(get_broker)) -> dict[str, int]:
        ack = await broker.publish(subject, await request.body())
        return {"seq": ack.seq}

    return app


def raw_app(url: str, stream: str, subject: str) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        nc = await nats.connect(url)
        try:
            yield {"js": nc.jetstream()}
        finally:
            await nc.drain()

    def get_js(request: Request) -> JetStreamContext:
        return request.state.js  # type: ignore[no-any-return]

    app = FastAPI(lifespan=lifespan)

    @app.post("/publish", status_code=202)
    async def publish(request: Request, js: JetStreamContext = Depends(get_js)) -> dict[str, int]:
        ack = await js.publish(subject, await request.body())
        return {"seq": ack.seq}

    return app


def faststream_app(url: str, stream: str, subject: str) -> FastAPI:
    from faststream.nats import NatsBroker

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        broker = NatsBroker(url, logger=None)
        await broker.start()
        try:
            yield {"faststream": broker}
        finally:
            await broker.stop()

    def get_faststream(request: Request) -> Any:
        return request.state.faststream

    app = FastAPI(lifespan=lifespan)

    @app.post("/publish", status_code=202)
    async def publish(request: Request, broker: Any = Depends(get_faststream)) -> dict[str, int]:
        # stream= makes FastStream wait for the PubAck; its 0.5 s default timeout is raised to ours' 5 s.
        ack = await broker.publish(await request.body(), subject, stream=stream, timeout=5.0)
        return {"seq": ack.seq}

    return app


APPS = {"ours": ours_app, "raw": raw_app, "faststream": faststream_app}


def main(argv: list[str]) -> None:
    impl, url, stream, subject, port, loop, http = argv
    app = APPS[impl](url, stream, subject)
    uvicorn.run(app, host="127.0.0.1", port=int(port), loop=loop, http=http, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
