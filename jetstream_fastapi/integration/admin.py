"""The admin page: consumers (lag, ack pending) and dead letters (replay, purge) of the app's broker, and
its outbox (backlog, oldest row's age, rows that need a look, retry) when it has one.

::

    app.include_router(admin_router(dependencies=[Depends(require_admin)]))   # your authentication
    app.include_router(admin_router(insecure=True))                           # local use only

One HTML page (no build step, no CDN, no external request) at ``GET /admin/jetstream`` over JSON
endpoints under ``/admin/jetstream/api``. The router refuses to be created without a decision about
authentication: the page replays and deletes messages. Every text from a message is put in the page as
text (``textContent``), never as HTML. Bad input is a 4xx with a reason (``{"detail": ...}``): an unknown
sequence 404, a letter replay refuses (malformed, truncated, a subject its stream does not capture, its
consumer gone: :class:`~jetstream_fastapi.errors.DeadLetterReplayError`) 422, a replay whose original
stream is gone 409, a purge without ``confirm`` 400; a server (or the outbox's database) that does not
answer 503. Never a 500. A replay the server answers ``duplicate`` (stored before) keeps the letter:
``{"duplicate": true, "kept": true}``.

What a hostile web page cannot do with the operator's browser:

* **CSRF**: every state-changing request (``POST``) needs the header ``X-JetStream-Admin: 1``, which a
  form or a cross-site ``fetch`` cannot send without a CORS preflight, and is refused (403) when the
  browser says it comes from another site (``Sec-Fetch-Site``) or another origin (``Origin``).
* **Clickjacking**: ``Content-Security-Policy: frame-ancestors 'none'`` and ``X-Frame-Options: DENY`` on
  every answer; the page runs only its own inline script and style (by their hashes).
* **DNS rebinding**: with ``insecure=True`` only loopback ``Host`` names are answered (``127.0.0.1``,
  ``[::1]``, ``localhost``, any port); any other is 403.
* Every answer carries ``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff``.

Lists are bounded (``limit`` up to :data:`MAX_LIMIT`) and show previews (:data:`PREVIEW` bytes of a body,
:data:`HEADER_PREVIEW` characters of a header value, flagged ``truncated`` with the full ``body_size``);
``GET .../dead-letters/{seq}`` has the whole letter. A list answers ``{"letters": [...], "next": seq}``:
the next page is ``?after=<next>`` (``next`` is ``null`` on the last page). Purging every dead letter
deletes at most ``limit`` per call and says whether ``more`` remain.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import dataclasses
import hashlib
import importlib.resources
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from ..core.dead_letters import next_cursor
from ..driver import Broker, DeadLetter, DeadLetterAdmin
from ..errors import (
    ConnectError,
    DeadLetterNotFoundError,
    DeadLetterReplayError,
    InvalidArgumentError,
    JetStreamError,
    NoStreamError,
    NotConnectedError,
    RequestTimeoutError,
)
from .lifespan import OUTBOX_KEY, STATE_KEY

T = TypeVar("T")
PREVIEW = 1024
"""Bytes of a dead letter's body a list shows (``GET .../dead-letters/{seq}`` has all of it)."""
HEADER_PREVIEW = 256
"""Characters of each header value (and of the error) a list shows."""
DEFAULT_LIMIT = 50
"""Dead letters a list shows when no ``limit`` is given."""
MAX_LIMIT = 200
"""Most dead letters one list answers, or one purge of every letter deletes."""
ADMIN_HEADER = "X-JetStream-Admin"
"""The header (value ``1``) every state-changing request must carry: the page's script sends it."""

_PURGE_PAGE = 50  # dead letters read at a time while purging every one (the broker reads whole bodies)
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "[::1]", "localhost"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class PurgeRequest(BaseModel):
    """The body of ``POST .../dead-letters/purge``: which dead letters, and the explicit confirmation."""

    confirm: bool = False
    seqs: list[int] | None = Field(None, max_length=MAX_LIMIT)
    """These sequences (at most :data:`MAX_LIMIT`); or, when ``None``, every dead letter (of
    ``stream``/``consumer`` when given), ``limit`` at a time."""
    stream: str | None = None
    consumer: str | None = None
    limit: int = Field(MAX_LIMIT, ge=1, le=MAX_LIMIT)
    """Most dead letters deleted by one purge of every letter; the answer's ``more`` says if some remain."""


class RetryRequest(BaseModel):
    """The body of ``POST .../outbox/retry``: these rows, or (``ids`` ``None``) every failed row, confirmed."""

    ids: list[int] | None = Field(None, max_length=MAX_LIMIT)
    confirm: bool = False


class _GuardedRoute(APIRoute):
    """Adds the security headers to every answer of the admin router, its errors included."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except HTTPException as error:
                response = await http_exception_handler(request, error)
            except RequestValidationError as error:
                response = await request_validation_exception_handler(request, error)
            for name, value in _SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)  # the page sets a policy of its own
            return response

        return guarded


def admin_router(
    *,
    dependencies: Sequence[Depends] | None = None,
    insecure: bool = False,
    broker: Broker | None = None,
    outbox: Any = None,
    prefix: str = "/admin/jetstream",
) -> APIRouter:
    """The admin page and its JSON endpoints under ``prefix``.

    ``dependencies`` (for example ``[Depends(require_admin)]``) run before every endpoint, the page
    included; without them, ``insecure=True`` must say that the page is meant for local use, and it then
    answers only requests addressed to a loopback name (``Host: 127.0.0.1``, ``[::1]`` or ``localhost``).
    ``broker`` (and ``outbox``, a :class:`jetstream_fastapi.outbox.Outbox`) default to those
    :func:`~jetstream_fastapi.jetstream_lifespan` put in the lifespan state.
    """
    if not dependencies and insecure is not True:
        raise InvalidArgumentError(
            "admin_router() replays and deletes messages: give it an authentication dependency "
            "(admin_router(dependencies=[Depends(require_admin)])) or, for local use only, insecure=True"
        )
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise InvalidArgumentError(f"prefix must start with '/' and not end with it, got {prefix!r}")
    page = importlib.resources.files(__package__).joinpath("admin.html").read_text("utf-8")
    page_headers = {"Content-Security-Policy": _page_policy(page)}
    guard = _RequestGuard(loopback_only=insecure)
    router = APIRouter(
        prefix=prefix,
        # The guard first: a rebound DNS name or a cross-site post is refused before anything else runs.
        dependencies=[Depends(guard), *(dependencies or ())],
        tags=["admin"],
        route_class=_GuardedRoute,
    )

    def broker_of(request: Request) -> Broker:
        found = broker if broker is not None else getattr(request.state, STATE_KEY, None)
        if found is None:
            raise HTTPException(503, "no broker: the app's jetstream_lifespan has not started")
        return found

    def letters_of(request: Request) -> DeadLetterAdmin:
        found = broker_of(request)
        if not isinstance(found, DeadLetterAdmin):
            raise HTTPException(501, "this broker keeps no dead letters")
        return found

    @router.get("", response_class=HTMLResponse, include_in_schema=False)
    async def admin_page() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    @router.get("/api/consumers")
    async def consumers(request: Request) -> list[dict[str, Any]]:
        """Every subscription of the broker with its consumer's figures on the server."""
        found = broker_of(request)
        states = {}
        consumer_states = getattr(found, "consumer_states", None)
        if consumer_states is not None:
            states = {(s.stream, s.name): s for s in await _call(consumer_states())}
        return [_consumer_row(sub, states) for sub in found.subscriptions]

    @router.get("/api/dead-letters")
    async def list_dead_letters(
        request: Request,
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
        stream: str | None = None,
        consumer: str | None = None,
        after: int | None = Query(None, ge=0),
    ) -> dict[str, Any]:
        """The oldest ``limit`` dead letters with a sequence above ``after``, bodies and header values cut to a
        preview; ``next`` is the ``after`` of the following page (``null`` on the last one)."""
        found = letters_of(request)
        letters = await _call(found.list_dead_letters(limit, stream=stream, consumer=consumer, after=after))
        return {"letters": [_preview(letter) for letter in letters], "next": next_cursor(letters, limit)}

    @router.get("/api/dead-letters/{seq}")
    async def show_dead_letter(request: Request, seq: int) -> dict[str, Any]:
        """One dead letter, its whole body included."""
        return _whole(await _call(letters_of(request).dead_letter(seq)))

    @router.post("/api/dead-letters/{seq}/replay")
    async def replay_dead_letter(request: Request, seq: int) -> dict[str, Any]:
        """Publish dead letter ``seq`` again to its original subject, and remove it."""
        ack = await _call(letters_of(request).replay_dead_letter(seq))
        # A duplicate: this replay was stored before, nothing new was, and the letter is kept.
        return {"stream": ack.stream, "seq": ack.seq, "duplicate": ack.duplicate, "kept": ack.duplicate}

    @router.post("/api/dead-letters/purge")
    async def purge_dead_letters(request: Request, body: PurgeRequest) -> dict[str, Any]:
        """Delete dead letters for good; refused (400) unless ``confirm`` is true."""
        if not body.confirm:
            raise HTTPException(400, "purging deletes dead letters for good: send confirm=true to go ahead")
        found = letters_of(request)
        if body.seqs is not None:
            purged = await _call(found.purge_dead_letters(body.seqs, stream=body.stream, consumer=body.consumer))
            return {"purged": purged, "more": False}
        purged, more = await _call(_purge_every(found, body.limit, body.stream, body.consumer))
        return {"purged": purged, "more": more}

    def outbox_of(request: Request) -> Any:
        return outbox if outbox is not None else getattr(request.state, OUTBOX_KEY, None)

    @router.get("/api/outbox")
    async def outbox_rows(request: Request, limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)) -> dict[str, Any]:
        """The outbox's backlog, oldest row's age and failed rows, and the rows that need a look (failed,
        refused, or waiting for over a minute), oldest first; ``{"outbox": null}`` for an app without one."""
        found = outbox_of(request)
        if found is None:
            return {"outbox": None}
        stats, rows = await _database(_outbox_view(found, limit))
        relay = found.relay
        return {
            "outbox": found.name,
            "backlog": stats.backlog,
            "oldest_age": round(stats.oldest_age, 3),
            "failed": stats.failed,
            "relay": "stopped" if relay is None else (relay.last_error or "running"),
            "rows": [_stuck_row(row) for row in rows],
        }

    @router.post("/api/outbox/retry")
    async def retry_outbox_rows(request: Request, body: RetryRequest) -> dict[str, Any]:
        """Clear the failed state of rows ``ids`` (or, confirmed, of every failed row): the relay publishes
        them again."""
        found = outbox_of(request)
        if found is None:
            raise HTTPException(404, "this app has no outbox")
        if body.ids is None and not body.confirm:
            raise HTTPException(400, "retrying every failed row publishes them all: send confirm=true to go ahead")
        return {"retried": await _database(found.retry(body.ids))}

    return router


async def _outbox_view(outbox: Any, limit: int) -> tuple[Any, list[Any]]:
    return await outbox.stats(), await outbox.stuck(limit)


async def _database(call: Awaitable[T]) -> T:
    """Await an outbox call, answering a database that fails or does not answer within 5 s with 503 (its
    error's type only: a driver's text may quote the database URL)."""
    try:
        async with asyncio.timeout(5.0):
            return await call
    except Exception as error:
        raise HTTPException(503, f"the outbox's database does not answer: {type(error).__name__}") from None


def _stuck_row(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "msg_id": row.msg_id,
        "subject": _cut(row.subject),
        "key": None if row.key is None else _cut(row.key),
        "attempts": row.attempts,
        "age": round(row.age, 3),
        "failed": None if row.failed is None else _cut(row.failed),
    }


class _RequestGuard:
    """The router's first dependency: refuses (403) a request to a non-loopback name when the router is
    insecure, and a state-changing request that does not come from the page itself."""

    def __init__(self, *, loopback_only: bool) -> None:
        self._loopback_only = loopback_only

    def __call__(self, request: Request) -> None:
        host = request.headers.get("host", "")
        if self._loopback_only and not _is_loopback(host):
            raise HTTPException(
                403,
                "misdirected request: this admin page (insecure=True) answers loopback names only "
                "(127.0.0.1, [::1], localhost); give it an authentication dependency to serve it elsewhere",
            )
        if request.method not in _SAFE_METHODS and not _from_the_page(request, host):
            raise HTTPException(
                403,
                f"cross-site request refused: a change must come from the admin page itself "
                f"(header {ADMIN_HEADER}: 1, same origin)",
            )


def _split_host(authority: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (or ``[v6]:port``) as a lower-case name and a port; ``None`` if malformed."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        name, bracket, rest = authority.partition("]")
        name += bracket
    else:
        name, colon, port_text = authority.partition(":")
        rest = colon + port_text
    if not name or name == "[]":
        return None
    if not rest:
        return name, None
    port_text = rest[1:]
    if not rest.startswith(":") or not port_text.isdigit() or not port_text.isascii():
        return None
    return name, int(port_text)


def _is_loopback(host: str) -> bool:
    split = _split_host(host)
    return split is not None and split[0] in _LOOPBACK_NAMES


def _from_the_page(request: Request, host: str) -> bool:
    """Whether a state-changing request comes from the page: it carries the admin header, and the browser
    (when it says) calls it same-origin. ``Sec-Fetch-Site`` is the browser's own verdict, so it decides when
    present (it also holds behind a proxy that rewrites ``Host``); otherwise ``Origin`` must name this host.
    A client that is no browser sends neither, and needs only the header."""
    if request.headers.get(ADMIN_HEADER) != "1":
        return False
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    default_port = _DEFAULT_PORTS.get(parts.scheme)
    ours, theirs = _split_host(host), _split_host(parts.netloc)
    if default_port is None or ours is None or theirs is None:
        return False  # "null" (a sandboxed frame, a data: URL), another scheme, or no Host
    return (ours[0], ours[1] or default_port) == (theirs[0], theirs[1] or default_port)


def _page_policy(page: str) -> str:
    """The page's Content-Security-Policy: its own inline script and style (by their SHA-256), requests to
    its own origin, nothing else; never framed."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
        digests = (base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() for block in blocks)
        return " ".join(f"'sha256-{digest}'" for digest in digests)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


async def _purge_every(
    letters: DeadLetterAdmin, limit: int, stream: str | None, consumer: str | None
) -> tuple[int, bool]:
    """Delete up to ``limit`` dead letters (of ``stream``/``consumer``), a page at a time; how many, and
    whether more remain."""
    purged = 0
    for _ in range(limit):  # each pass deletes at least one, or stops
        page = await letters.list_dead_letters(min(_PURGE_PAGE, limit - purged), stream=stream, consumer=consumer)
        if not page:
            return purged, False
        try:
            deleted = await letters.purge_dead_letters([letter.seq for letter in page])
        except DeadLetterNotFoundError:
            continue  # another purge or replay took one meanwhile: read the page again
        purged += deleted
        if purged >= limit or not deleted:
            break
    return purged, bool(await letters.list_dead_letters(1, stream=stream, consumer=consumer))


async def _call(call: Awaitable[T]) -> T:
    """Await a broker call, answering its failures as 4xx (or 503 when the server is away), never 500."""
    try:
        return await call
    except DeadLetterNotFoundError as error:
        raise HTTPException(404, str(error)) from None
    except DeadLetterReplayError as error:
        # The letter itself is the problem (malformed, truncated, a subject its stream does not capture):
        # asking again changes nothing, unlike a 409.
        raise HTTPException(422, str(error)) from None
    except NoStreamError as error:
        raise HTTPException(409, str(error)) from None
    except InvalidArgumentError as error:
        raise HTTPException(400, str(error)) from None
    except (NotConnectedError, ConnectError, RequestTimeoutError) as error:
        raise HTTPException(503, f"the NATS server does not answer: {error}") from None
    except JetStreamError as error:
        raise HTTPException(409, str(error)) from None


def _consumer_row(sub: Any, states: dict[tuple[str, str], Any]) -> dict[str, Any]:
    stream, name = getattr(sub, "stream", ""), getattr(sub, "consumer_name", sub.queue or "")
    state = states.get((stream, name))
    settings = getattr(sub, "settings", None)
    return {
        "stream": stream,
        "consumer": name,
        "subject": sub.subject,
        "queue": sub.queue,
        "state": sub.state,
        "in_flight": sub.in_flight,
        "last_error": sub.last_error,
        **({} if state is None else _figures(state)),
        "options": _plain(settings) if settings is not None else {},
    }


def _figures(state: Any) -> dict[str, Any]:
    return {
        "pending": state.pending,
        "ack_pending": state.ack_pending,
        "redelivered": state.redelivered,
        "last_active": state.last_active.isoformat() if state.last_active else None,
        "paused": state.paused,
    }


def _whole(letter: DeadLetter) -> dict[str, Any]:
    return {**letter.as_dict(), "body_size": len(letter.body), "truncated": False}


def _preview(letter: DeadLetter) -> dict[str, Any]:
    """The letter with its body cut to :data:`PREVIEW` bytes (never inside a character) and its header
    values and error to :data:`HEADER_PREVIEW` characters."""
    view = letter.as_dict()
    truncated = len(letter.body) > PREVIEW
    # An incremental decoder leaves out a character cut in half at the end instead of mangling it.
    view["body"] = codecs.getincrementaldecoder("utf-8")("replace").decode(letter.body[:PREVIEW], final=not truncated)
    view["headers"] = {name: _cut(value) for name, value in letter.headers.items()}
    view["error"] = _cut(letter.error)
    view["body_size"] = len(letter.body)
    view["truncated"] = truncated
    return view


def _cut(text: str) -> str:
    return text if len(text) <= HEADER_PREVIEW else text[:HEADER_PREVIEW] + "…"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    return value
