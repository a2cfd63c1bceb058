"""The AsyncAPI 3.0 document of an app: every handler's subject and every declared publication.

::

    app.include_router(asyncapi_router(consumer_router, title="Orders", version="1.0.0"))
    # GET /asyncapi.json: the document; GET /asyncapi: the same as an HTML page (no script, no CDN)

Each handler of a :class:`~jetstream_fastapi.ConsumerRouter` becomes a ``receive`` operation on the channel
of its subject, with its queue as the NATS operation binding, its consumer options under
``x-jetstream-consumer``, and the payload schema of its typed payload parameter (pydantic's JSON Schema;
``bytes`` or the raw :class:`~jetstream_fastapi.Message` as binary); a handler annotated with a return type
answers requests (``broker.request``), and its operation has a ``reply`` with that type's schema, sent to
the address in the request's ``Request-Reply-To`` header. Each
:class:`~jetstream_fastapi.Publication` becomes a ``send`` operation; those declared on an outbox
(``outbox.publisher(...)``, with ``outboxes=[outbox]``) carry ``x-jetstream-outbox`` (the table), since
they leave after the app's transaction commits, by the relay.
"""

from __future__ import annotations

import html
import inspect
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, TypeAdapter

from ..core.redaction import split_url
from ..core.requests import REPLY_TO
from ..driver import Message
from .publishing import Publication
from .routing import ConsumerRouter, HandlerSpec

ASYNCAPI_VERSION = "3.0.0"
OPENAPI_MARK = "x-asyncapi-document"
"""Set on the OpenAPI operation of ``GET .../asyncapi.json``, so that tools find where an app serves it."""
_BINARY = ("application/octet-stream", {"type": "string", "format": "binary"})
_REF = "#/components/schemas/{model}"


class _Builder:
    def __init__(self) -> None:
        self.channels: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.schemas: dict[str, Any] = {}
        self._channel_of: dict[str, str] = {}
        self._replies: str | None = None  # the channel of every reply, made at the first handler that answers

    def channel(self, subject: str) -> str:
        if subject in self._channel_of:
            return self._channel_of[subject]
        base = re.sub(r"\W+", "_", subject.replace(">", "all").replace("*", "any")).strip("_") or "channel"
        name, n = base, 1
        while name in self.channels:
            n += 1
            name = f"{base}_{n}"
        self.channels[name] = {"address": subject, "messages": {}}
        self._channel_of[subject] = name
        return name

    def message(self, channel: str, annotation: Any) -> dict[str, str]:
        content_type, payload, title = self.payload(annotation)
        key = re.sub(r"[^\w.\-]+", "_", title)
        self.messages.setdefault(key, {"name": key, "title": title, "contentType": content_type, "payload": payload})
        self.channels[channel]["messages"][key] = {"$ref": f"#/components/messages/{key}"}
        return {"$ref": f"#/channels/{channel}/messages/{key}"}

    def payload(self, annotation: Any) -> tuple[str, dict[str, Any], str]:
        if annotation is None or annotation is Message or annotation is bytes:
            return (*_BINARY, "Binary")
        if annotation is str:
            return "text/plain", {"type": "string"}, "Text"
        schema = TypeAdapter(annotation).json_schema(ref_template=_REF)
        self.schemas.update(schema.pop("$defs", {}))
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            self.schemas[annotation.__name__] = schema
            return "application/json", {"$ref": _REF.format(model=annotation.__name__)}, annotation.__name__
        title = str(schema.get("title") or getattr(annotation, "__name__", None) or "Json")
        return "application/json", schema, title

    def operation(self, base: str, body: dict[str, Any]) -> None:
        name, n = base, 1
        while name in self.operations:
            n += 1
            name = f"{base}_{n}"
        self.operations[name] = body

    def receive(self, spec: HandlerSpec) -> None:
        channel = self.channel(spec.subject)
        body: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"{spec.plan.name} handles {spec.subject}",
            "messages": [self.message(channel, spec.plan.payload_type)],
        }
        if spec.plan.reply_type is not None:
            body["reply"] = self.reply(spec.plan.reply_type)
        doc = inspect.getdoc(spec.handler) or ""
        if doc:
            body["description"] = doc
        if spec.queue:
            body["bindings"] = {"nats": {"queue": spec.queue, "bindingVersion": "0.1.0"}}
        body["x-jetstream-consumer"] = {"durable": spec.queue is not None, "options": _plain(dict(spec.options))}
        self.operation(re.sub(r"\W+", "_", f"receive_{spec.plan.name.split('.')[-1]}"), body)

    def reply(self, annotation: Any) -> dict[str, Any]:
        """The reply of a handler that answers requests: to the address each request names (a channel
        without an address of its own, as AsyncAPI has it for dynamic replies)."""
        if self._replies is None:
            name, n = "replies", 1
            while name in self.channels:
                n += 1
                name = f"replies_{n}"
            self.channels[name] = {"address": None, "messages": {}, "description": "replies to requests"}
            self._replies = name
        return {
            "address": {"location": f"$message.header#/{REPLY_TO}", "description": "the requester's inbox"},
            "channel": {"$ref": f"#/channels/{self._replies}"},
            "messages": [self.message(self._replies, annotation)],
        }

    def send(self, publication: Publication[Any], outbox: str | None = None) -> None:
        channel = self.channel(publication.subject)
        via = f" through the outbox {outbox} (after the transaction commits)" if outbox else ""
        body: dict[str, Any] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"publishes to {publication.subject}{via}",
            "messages": [self.message(channel, publication.payload)],
        }
        if publication.description:
            body["description"] = publication.description
        if outbox:
            body["x-jetstream-outbox"] = {"table": outbox}
        self.operation(f"send_{channel}", body)


def _plain(value: Any) -> Any:
    """Options as JSON (a ``Backoff`` becomes its fields)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None:
        return {name: _plain(getattr(value, name)) for name in fields}
    return repr(value)


def asyncapi_document(
    *routers: ConsumerRouter,
    publications: Iterable[Publication[Any]] = (),
    outboxes: Iterable[Any] = (),
    title: str = "jetstream-fastapi app",
    version: str = "0.1.0",
    description: str | None = None,
    servers: Sequence[str] = (),
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a JSON-ready dict) of ``routers``' handlers and publications, of
    ``publications``, and of what ``outboxes`` (:class:`jetstream_fastapi.outbox.Outbox`) declared with
    ``outbox.publisher(...)``; ``servers`` are NATS URLs listed as the document's servers."""
    builder = _Builder()
    declared: list[Publication[Any]] = []
    for router in routers:
        for spec in router:
            builder.receive(spec)
        declared += router.publications
    for publication in [*declared, *publications]:
        builder.send(publication)
    for outbox in outboxes:
        for publication in outbox.publications:
            builder.send(publication, outbox=outbox.name)
    info: dict[str, Any] = {"title": title, "version": version}
    if description:
        info["description"] = description
    document: dict[str, Any] = {"asyncapi": ASYNCAPI_VERSION, "info": info}
    if servers:
        document["servers"] = {f"nats{i or ''}": _server(url) for i, url in enumerate(servers)}
    document["defaultContentType"] = "application/json"
    document["channels"] = builder.channels
    document["operations"] = builder.operations
    document["components"] = {"messages": builder.messages, "schemas": builder.schemas}
    return document


def _server(url: str) -> dict[str, str]:
    scheme, _, rest = split_url(url)  # never the user info
    host, _, path = rest.partition("/")
    server = {"host": host, "protocol": _PROTOCOLS.get(scheme, "nats")}
    if path:
        server["pathname"] = f"/{path}"
    return server


_PROTOCOLS = {"ws://": "ws", "wss://": "wss"}
"""AsyncAPI protocols of the WebSocket schemes; ``nats://``, ``tls://`` and no scheme are ``nats``."""


def render_html(document: dict[str, Any], json_link: str = "asyncapi.json") -> str:
    """A human-readable page of ``document`` (linking to ``json_link``): every text escaped, no script."""
    e = html.escape
    info = document["info"]
    rows: list[str] = []
    for name, operation in document["operations"].items():
        channel = document["channels"][operation["channel"]["$ref"].rsplit("/", 1)[-1]]
        queue = operation.get("bindings", {}).get("nats", {}).get("queue", "")
        payloads = []
        for ref in operation["messages"]:
            key = ref["$ref"].rsplit("/", 1)[-1]
            message = document["components"]["messages"][key]
            payloads.append(f"<b>{e(message['title'])}</b> ({e(message['contentType'])})")
        options = operation.get("x-jetstream-consumer", {}).get("options") or {}
        rows.append(
            f"<tr><td>{e(operation['action'])}</td><td><code>{e(channel['address'])}</code></td>"
            f"<td>{e(queue)}</td><td>{', '.join(payloads)}</td><td>{e(name)}: {e(operation.get('summary', ''))}"
            f"<br><small>{e(operation.get('description', ''))}</small></td>"
            f"<td><code>{e(json.dumps(options)) if options else ''}</code></td></tr>"
        )
    schemas = "".join(
        f"<h3 id='{e(name)}'>{e(name)}</h3><pre>{e(json.dumps(schema, indent=2))}</pre>"
        for name, schema in document["components"]["schemas"].items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(info["title"])}: AsyncAPI</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}}
pre{{background:#f5f5f5;padding:.5rem}}
</style></head><body>
<h1>{e(info["title"])} <small>{e(info["version"])}</small></h1>
<p>{e(info.get("description", ""))}</p>
<p>AsyncAPI {e(document["asyncapi"])}: <a href="{e(json_link)}">{e(json_link)}</a></p>
<h2>Operations</h2>
<table><tr><th>action</th><th>subject</th><th>queue</th><th>payload</th><th>operation</th><th>consumer options</th></tr>
{"".join(rows)}</table>
<h2>Schemas</h2>{schemas}
</body></html>"""


def asyncapi_router(
    *routers: ConsumerRouter,
    publications: Iterable[Publication[Any]] = (),
    outboxes: Iterable[Any] = (),
    title: str = "jetstream-fastapi app",
    version: str = "0.1.0",
    description: str | None = None,
    servers: Sequence[str] = (),
    path: str = "/asyncapi",
) -> APIRouter:
    """A router serving the AsyncAPI document of ``routers`` at ``{path}.json`` and as HTML at ``path``.

    The document is built once, here: a registration mistake shows at startup, not on the first request.
    """
    document = asyncapi_document(
        *routers,
        publications=publications,
        outboxes=outboxes,
        title=title,
        version=version,
        description=description,
        servers=servers,
    )
    page = render_html(document, path.rstrip("/").rsplit("/", 1)[-1] + ".json")
    router = APIRouter(tags=["asyncapi"])

    async def asyncapi_json() -> dict[str, Any]:
        return document

    async def asyncapi_html() -> HTMLResponse:
        return HTMLResponse(page)

    # The CLI's `asyncapi APP` finds this route in the app's OpenAPI document by this mark.
    router.add_api_route(
        f"{path}.json",
        asyncapi_json,
        methods=["GET"],
        summary="The AsyncAPI 3.0 document",
        openapi_extra={OPENAPI_MARK: True},
    )
    router.add_api_route(path, asyncapi_html, methods=["GET"], summary="The AsyncAPI document as a page")
    return router
