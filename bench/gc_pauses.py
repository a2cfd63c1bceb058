"""Python's garbage collector under the HTTP route: how often a full collection stops the process, and for
how long, with and without ``gc.freeze()`` after startup (issue #11's p99 figures).

Usage::

    .venv/bin/python bench/gc_pauses.py [--requests 9600] [--loop uvloop|asyncio]

It starts its own nats-server, and for each route of ``http_app.py`` (raw nats-py, the control through
``Depends``, ours as the README writes it) runs the app in process through ``asgi-lifespan`` and calls it
as an ASGI app, 32 requests in flight at a time (wrk's connection count in ``http_route.py``), without
sockets. ``gc.callbacks`` times every collection. Reported per route and generation: how many
collections ran, the longest and their total, and the requests per second of the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections import defaultdict
from typing import Any

from asgi_lifespan import LifespanManager
from common import ORDER_BODY, fresh_stream, run_on
from http_app import APPS

from jetstream_fastapi.server import NatsServer

IN_FLIGHT = 32
ROUTES = ("raw", "raw_depends", "ours")


class Pauses:
    """Every collection's duration, by generation, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.by_generation: dict[int, list[float]] = defaultdict(list)
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.by_generation[info["generation"]].append(time.perf_counter() - self._started)


def scope(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/orders",
        "raw_path": b"/orders",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(ORDER_BODY)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": dict(state),  # as uvicorn does: a copy of the lifespan state per request
    }


class InProcess:
    """Calls an app in process as an ASGI server would, ``IN_FLIGHT`` requests at a time, and keeps the status
    of every answer."""

    def __init__(self, manager: LifespanManager) -> None:
        self._app = manager.app
        self._state = manager._state
        self.statuses: list[int] = []

    async def _receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": ORDER_BODY, "more_body": False}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.statuses.append(message["status"])

    async def burst(self) -> None:
        """``IN_FLIGHT`` requests at once."""
        await asyncio.gather(*(self._app(scope(self._state), self._receive, self._send) for _ in range(IN_FLIGHT)))

    def check(self, route: str) -> None:
        """Raise unless every answer was 202."""
        if set(self.statuses) != {202}:
            raise RuntimeError(f"{route}: answers {sorted(set(self.statuses))}, not only 202")


async def route_run(url: str, route: str, requests: int, freeze: bool) -> str:
    name = f"GC_{route.upper()}_{int(freeze)}"
    async with fresh_stream(url, name, [name.lower()], max_msgs=100_000):
        app = APPS[route](url, name, name.lower())
        async with LifespanManager(app) as manager:
            caller = InProcess(manager)
            if freeze:
                gc.freeze()  # what an app can do once its startup is over
            pauses = Pauses()
            gc.callbacks.append(pauses)
            try:
                started = time.perf_counter()
                for _ in range(requests // IN_FLIGHT):
                    await caller.burst()
                seconds = time.perf_counter() - started
            finally:
                gc.callbacks.remove(pauses)
                gc.unfreeze()
            caller.check(route)
    cells = []
    for generation in (0, 1, 2):
        times = pauses.by_generation.get(generation, [])
        longest = max(times, default=0.0) * 1e3
        cells.append(f"{len(times)} / {longest:.1f} / {sum(times) * 1e3:.0f}")
    frozen = "yes" if freeze else "no"
    answered = len(caller.statuses)
    return f"| {route} | {frozen} | {answered} | {answered / seconds:,.0f} | " + " | ".join(cells) + " |"


async def main(requests: int) -> None:
    with NatsServer() as server:
        lines = [
            "| route | gc.freeze() | requests | req/s | gen 0: count / longest ms / total ms | gen 1 | gen 2 |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for freeze in (False, True):
            for route in ROUTES:
                lines.append(await route_run(server.url, route, requests, freeze))
        print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=9600)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    args = parser.parse_args()
    run_on(args.loop, main(args.requests))
