"""Startup and shutdown of a FastAPI app run by ``jetstream_lifespan``, driven by ``asgi_lifespan``.

* startup: an app whose ``ConsumerRouter`` has 10 handlers (10 subjects, 10 durable queues, streams
  created beforehand): from the lifespan ``startup`` event to "startup complete" (connect, stream
  lookups, 10 consumers created, 10 pull workers started).
* idle shutdown: the same app, right after startup, from ``shutdown`` to "shutdown complete".
* busy shutdown: an app with one handler at concurrency 256 and 256 messages in it, each handler
  blocked on an event; the event is set as shutdown starts, so the time covers finishing 256 handlers,
  their acks, and the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from asgi_lifespan import LifespanManager
from common import Target, fresh_stream, prefill
from fastapi import FastAPI

from jetstream_fastapi import ConsumerRouter, JetStreamBroker, jetstream_lifespan
from jetstream_fastapi.driver import Message

CONSUMERS = 10
IN_FLIGHT = 256


@dataclass(frozen=True)
class LifecycleSample:
    startup: float  # seconds, app with 10 consumers
    idle_shutdown: float  # seconds, the same app right after startup
    busy_shutdown: float  # seconds, app with 256 handlers in flight


@contextlib.asynccontextmanager
async def streams(url: str, rnd: int, count: int) -> AsyncIterator[list[Target]]:
    targets = [Target(url, f"BENCH_LIFE_R{rnd}_{i}", f"bench.life.r{rnd}.s{i}") for i in range(count)]
    async with contextlib.AsyncExitStack() as stack:
        for t in targets:
            await stack.enter_async_context(fresh_stream(url, t.stream, [t.subject]))
        yield targets


def ten_consumer_router(targets: list[Target]) -> ConsumerRouter:
    router = ConsumerRouter()
    for i, target in enumerate(targets):

        async def handler(message: Message) -> None:
            pass

        router.handle(target.subject, queue=f"service{i}")(handler)
    return router


async def startup_and_idle_shutdown(url: str, rnd: int) -> tuple[float, float]:
    async with streams(url, rnd, CONSUMERS) as targets:
        app = FastAPI(lifespan=jetstream_lifespan(JetStreamBroker(url), ten_consumer_router(targets)))
        manager = LifespanManager(app)
        start = time.perf_counter()
        await manager.__aenter__()
        startup = time.perf_counter() - start
        start = time.perf_counter()
        await manager.__aexit__(None, None, None)
        return startup, time.perf_counter() - start


async def busy_shutdown(url: str, rnd: int) -> float:
    target = Target(url, f"BENCH_BUSY_R{rnd}", f"bench.busy.r{rnd}")
    async with fresh_stream(url, target.stream, [target.subject]):
        await prefill(target, IN_FLIGHT)
        started = 0
        all_started = asyncio.Event()
        release = asyncio.Event()
        router = ConsumerRouter()

        @router.handle(target.subject, queue="busy", concurrency=IN_FLIGHT, batch_size=IN_FLIGHT)
        async def handler(message: Message) -> None:
            nonlocal started
            started += 1
            if started >= IN_FLIGHT:
                all_started.set()
            await release.wait()

        app = FastAPI(lifespan=jetstream_lifespan(JetStreamBroker(url), router))
        manager = LifespanManager(app, shutdown_timeout=30)
        await manager.__aenter__()
        try:
            await asyncio.wait_for(all_started.wait(), timeout=30)
        finally:
            start = time.perf_counter()
            release.set()
            await manager.__aexit__(None, None, None)
            seconds = time.perf_counter() - start
        return seconds


async def lifecycle_round(url: str, rnd: int) -> LifecycleSample:
    startup, idle = await startup_and_idle_shutdown(url, rnd)
    return LifecycleSample(startup, idle, await busy_shutdown(url, rnd))
