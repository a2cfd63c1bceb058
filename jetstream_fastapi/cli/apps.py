"""Apps given as ``module:attribute``: the AsyncAPI document of one (``asyncapi APP``), the outbox of one
(``outbox list --app APP``)."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from typing import Any

import click


def load_document(target: str) -> dict[str, Any]:
    """The document of ``target``: a FastAPI app including ``asyncapi_router()`` or run by
    ``jetstream_lifespan(broker, *routers)`` (the routers it holds, and its outbox, are documented), a function
    returning one (called without arguments), or a :class:`~jetstream_fastapi.ConsumerRouter`."""
    from ..integration.asyncapi import OPENAPI_MARK, asyncapi_document
    from ..integration.lifespan import lifespan_of
    from ..integration.routing import ConsumerRouter

    obj = _load(target)
    if isinstance(obj, ConsumerRouter):
        return asyncapi_document(obj)
    if callable(obj) and not hasattr(obj, "openapi"):
        obj = obj()
    openapi = getattr(obj, "openapi", None)
    if callable(openapi):
        for path, operations in openapi().get("paths", {}).items():
            if operations.get("get", {}).get(OPENAPI_MARK):
                return asyncio.run(_get(obj, path))
    lifespan = lifespan_of(obj)
    if lifespan is not None and (lifespan.routers or lifespan.outbox is not None):
        return asyncapi_document(
            *lifespan.routers,
            title=str(getattr(obj, "title", "jetstream-fastapi app")),
            version=str(getattr(obj, "version", "0.1.0")),
            outboxes=[lifespan.outbox] if lifespan.outbox is not None else (),
        )
    raise click.ClickException(
        f"{target} is no app including asyncapi_router() or run by jetstream_lifespan(broker, router), "
        "app factory or ConsumerRouter: nothing to document"
    )


def _load(target: str) -> Any:
    """The object ``target`` (``module:attribute``, dots allowed in the attribute) names."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.UsageError(f"APP must be module:attribute (example_app.app:create_app), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as uvicorn does: the app's module is found from where you stand
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise click.ClickException(f"cannot import {module_name!r}: {error}") from None
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise click.ClickException(f"{module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj


def load_outbox(target: str) -> Any:
    """The :class:`~jetstream_fastapi.outbox.Outbox` of ``target``: an outbox, or a FastAPI app (or a factory
    of one, called without arguments) created with ``jetstream_lifespan(..., outbox=...)``. The app's
    lifespan is not run: nothing connects to NATS, no handler starts."""
    from ..integration.lifespan import lifespan_of
    from ..outbox import Outbox

    obj = _load(target)
    if not isinstance(obj, Outbox) and callable(obj) and not hasattr(obj, "router"):
        obj = obj()
    if not isinstance(obj, Outbox):
        lifespan = lifespan_of(obj)
        obj = lifespan.outbox if lifespan is not None else None
    if not isinstance(obj, Outbox):
        raise click.ClickException(
            f"{target} is no Outbox, nor an app (or app factory) created with jetstream_lifespan(..., outbox=...)"
        )
    return obj


async def _get(app: Any, path: str) -> dict[str, Any]:
    """``GET path`` of the ASGI ``app``, in process (the app's lifespan is not run: the route needs no broker)."""
    scope: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET"}
    scope.update(path=path, raw_path=path.encode(), root_path="", scheme="http", query_string=b"", headers=[])
    chunks: list[bytes] = []
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    if status != 200:
        raise click.ClickException(f"GET {path} of the app answered {status}")
    document: dict[str, Any] = json.loads(b"".join(chunks))
    return document
