"""``GET /metrics`` in the Prometheus text format: ``app.include_router(metrics_router())``.

The answer is the process's instruments (:mod:`.metrics`) followed by the broker's scrape-time figures
(:mod:`.scrape`: consumer lag and ack pending read from the server, cached for a second) and, with
``jetstream_lifespan(..., outbox=...)``, the outbox's (backlog, oldest row's age, failed rows: one query,
cached for a second; the relay's published and dead-lettered counts). While NATS or the database is down
it answers 200 with the last known figures and ``jetstream_up 0`` (``jetstream_outbox_up 0``); never a 500.

Several uvicorn workers: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the workers start
(``prometheus_client``'s multiprocess mode); each scrape then sums the counters and histograms of every
worker, and the scrape-time figures come from the worker that answers.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request, Response

from ..driver import Broker
from ..integration.lifespan import OUTBOX_KEY
from . import metrics as instruments
from .scrape import FiguresCollector, WithDerivedCounters, figures_of, outbox_figures_of

__all__ = ["metrics_router"]


def metrics_router(*, broker: Broker | None = None, outbox: Any = None, path: str = "/metrics") -> APIRouter:
    """A router serving ``GET {path}``; the broker (and the outbox) are those of the app's
    ``jetstream_lifespan`` unless ``broker`` (``outbox``, a :class:`jetstream_fastapi.outbox.Outbox`) is
    given. Needs ``prometheus_client`` (``pip install 'jetstream-fastapi[metrics]'``)."""
    if not instruments.PROMETHEUS:
        raise ModuleNotFoundError(
            "metrics_router() needs prometheus_client: pip install 'jetstream-fastapi[metrics]'",
            name="prometheus_client",
        )
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    router = APIRouter()

    def process_registry() -> Any:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return REGISTRY
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry

    @router.get(path, include_in_schema=False)
    async def metrics(request: Request) -> Response:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WithDerivedCounters(process_registry()))
        served: Broker | None = broker if broker is not None else getattr(request.state, "jetstream_broker", None)
        if served is not None:
            figures = figures_of(served)
            await figures.refresh()
            registry.register(FiguresCollector(figures))
        relayed = outbox if outbox is not None else getattr(request.state, OUTBOX_KEY, None)
        if relayed is not None:
            table = outbox_figures_of(relayed)
            await table.refresh()
            registry.register(FiguresCollector(table))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
