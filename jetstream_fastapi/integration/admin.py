"""The admin page: consumers (lag, ack pending) and dead letters (replay, purge) of the app's broker.

::

    app.include_router(admin_router(dependencies=[Depends(require_admin)]))   # your authentication
    app.include_router(admin_router(insecure=True))                           # local use only

One HTML page (no build step, no CDN, no external request) at ``GET /admin/jetstream`` over JSON
endpoints under ``/admin/jetstream/api``. The router refuses to be created without a decision about
authentication: the page replays and deletes messages. Every text from a message is put in the page as
text (``textContent``), never as HTML. Bad input is a 4xx with a reason (``{"detail": ...}``): an unknown
sequence 404, a replay whose original stream is gone 409, a purge without ``confirm`` 400; a server that
does not answer 503. Never a 500.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from ..core.deadletters import DeadLetter, DeadLetterAdmin
from ..driver import Broker
from ..errors import (
    ConnectError,
    DeadLetterNotFoundError,
    InvalidArgumentError,
    JetStreamError,
    NoStreamError,
    NotConnectedError,
    RequestTimeoutError,
)
from .lifespan import STATE_KEY

T = TypeVar("T")
PREVIEW = 4096
"""Characters of a dead letter's body the list shows (``GET .../dead-letters/{seq}`` has all of it)."""


class PurgeRequest(BaseModel):
    """The body of ``POST .../dead-letters/purge``: which dead letters, and the explicit confirmation."""

    confirm: bool = False
    seqs: list[int] | None = None
    """These sequences; or, when ``None``, every dead letter (of ``stream``/``consumer`` when given)."""
    stream: str | None = None
    consumer: str | None = None


def admin_router(
    *,
    dependencies: Sequence[Depends] | None = None,
    insecure: bool = False,
    broker: Broker | None = None,
    prefix: str = "/admin/jetstream",
) -> APIRouter:
    """The admin page and its JSON endpoints under ``prefix``.

    ``dependencies`` (for example ``[Depends(require_admin)]``) run before every endpoint, the page
    included; without them, ``insecure=True`` must say that the page is meant for local use.
    ``broker`` defaults to the one :func:`~jetstream_fastapi.jetstream_lifespan` put in the lifespan state.
    """
    if not dependencies and insecure is not True:
        raise InvalidArgumentError(
            "admin_router() replays and deletes messages: give it an authentication dependency "
            "(admin_router(dependencies=[Depends(require_admin)])) or, for local use only, insecure=True"
        )
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise InvalidArgumentError(f"prefix must start with '/' and not end with it, got {prefix!r}")
    page = importlib.resources.files(__package__).joinpath("admin.html").read_text("utf-8")
    router = APIRouter(prefix=prefix, dependencies=list(dependencies or ()), tags=["admin"])

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
        return HTMLResponse(page, headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"})

    @router.get("/api/consumers")
    async def consumers(request: Request) -> list[dict[str, Any]]:
        """Every subscription of the broker with its consumer's figures on the server."""
        found = broker_of(request)
        states = {}
        consumer_states = getattr(found, "consumer_states", None)
        if consumer_states is not None:
            states = {(s.stream, s.name): s for s in await _call(consumer_states())}
        rows = []
        for sub in found.subscriptions:
            stream, name = getattr(sub, "stream", ""), getattr(sub, "consumer_name", sub.queue or "")
            state = states.get((stream, name))
            settings = getattr(sub, "settings", None)
            rows.append(
                {
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
            )
        return rows

    @router.get("/api/dead-letters")
    async def list_dead_letters(
        request: Request,
        limit: int = Query(100, ge=1, le=1000),
        stream: str | None = None,
        consumer: str | None = None,
    ) -> list[dict[str, Any]]:
        """The oldest ``limit`` dead letters, bodies cut to a preview."""
        found = letters_of(request)
        letters = await _call(found.list_dead_letters(limit, stream=stream, consumer=consumer))
        return [_view(letter, PREVIEW) for letter in letters]

    @router.get("/api/dead-letters/{seq}")
    async def show_dead_letter(request: Request, seq: int) -> dict[str, Any]:
        """One dead letter, its whole body included."""
        return _view(await _call(letters_of(request).dead_letter(seq)), None)

    @router.post("/api/dead-letters/{seq}/replay")
    async def replay_dead_letter(request: Request, seq: int) -> dict[str, Any]:
        """Publish dead letter ``seq`` again to its original subject, and remove it."""
        ack = await _call(letters_of(request).replay_dead_letter(seq))
        return {"stream": ack.stream, "seq": ack.seq, "duplicate": ack.duplicate}

    @router.post("/api/dead-letters/purge")
    async def purge_dead_letters(request: Request, body: PurgeRequest) -> dict[str, int]:
        """Delete dead letters for good; refused (400) unless ``confirm`` is true."""
        if not body.confirm:
            raise HTTPException(400, "purging deletes dead letters for good: send confirm=true to go ahead")
        found = letters_of(request)
        purged = await _call(found.purge_dead_letters(body.seqs, stream=body.stream, consumer=body.consumer))
        return {"purged": purged}

    return router


# Only the page's own inline style and script; nothing loaded from elsewhere.
_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"


async def _call(call: Awaitable[T]) -> T:
    """Await a broker call, answering its failures as 4xx (or 503 when the server is away), never 500."""
    try:
        return await call
    except DeadLetterNotFoundError as error:
        raise HTTPException(404, str(error)) from None
    except NoStreamError as error:
        raise HTTPException(409, str(error)) from None
    except InvalidArgumentError as error:
        raise HTTPException(400, str(error)) from None
    except (NotConnectedError, ConnectError, RequestTimeoutError) as error:
        raise HTTPException(503, f"the NATS server does not answer: {error}") from None
    except JetStreamError as error:
        raise HTTPException(409, str(error)) from None


def _figures(state: Any) -> dict[str, Any]:
    return {
        "pending": state.pending,
        "ack_pending": state.ack_pending,
        "redelivered": state.redelivered,
        "last_active": state.last_active.isoformat() if state.last_active else None,
        "paused": state.paused,
    }


def _view(letter: DeadLetter, preview: int | None) -> dict[str, Any]:
    view = letter.as_dict()
    body = str(view["body"])
    view["body_size"] = len(letter.body)
    view["truncated"] = preview is not None and len(body) > preview
    if preview is not None:
        view["body"] = body[:preview]
    return view


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    return value
