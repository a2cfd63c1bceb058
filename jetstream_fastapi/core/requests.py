"""Durable request/reply: ``broker.request`` on the requester's side, and a handler's answer on the consumer's.

**The request** is stored in its stream like any publish (the PubAck awaited, one msg id for the whole call,
so the publish's own retries store it once), with a ``Request-Reply-To`` header naming where to answer:
``<inbox>.<token>``. ``<inbox>`` is one core NATS inbox per broker connection (``<inbox prefix>.<id>``, a
wildcard subscription opened at the first request; nats-py subscribes it again after a reconnect) and
``<token>`` one per request, as nats.go's request mux does: 128 random bits, so that nobody who reads the
stream can guess the address of the next request and answer it first. The address travels in a header
because a stream stores headers but not a core message's reply subject. The call then waits for the reply;
publishing and waiting share one deadline, counted on the backend's clock (a test's
:class:`~jetstream_fastapi.clock.ManualClock` in memory), and past it
:class:`~jetstream_fastapi.errors.ReplyTimeoutError` is raised. The first reply for a token wins; a later
one (a redelivered request handled again) finds no waiter and is dropped.

**The answer** is decided by :class:`~jetstream_fastapi.core.processing.Processor` with a
:class:`Replier`, for a message carrying ``Request-Reply-To`` only, and only when that address is one
``request()`` makes (:meth:`Replier.allows`): ``<inbox prefix>.<inbox>.<token>``, short, and captured by no
stream. Anyone on the account can publish a message with that header: answered blindly, a JetStream API
subject (``$JS.API.STREAM.PURGE.<stream>``, an empty error reply being a valid API request) or another
stream's subject would be acted on with the app's credentials, and an address longer than the server's
control line would close the app's connection. Any other address is not answered: the message is handled
as a plain one, with a warning and the subscription's ``reply_refused`` counter.

* the handler returned a value other than ``None``: the value, encoded as ``publish`` encodes a message,
  is sent to the address (core NATS, not stored) *before* the ack. If it cannot be sent, the message is
  naked (redelivered: at-least-once); if it cannot be encoded (or is too large), the message is
  terminated, so dead-lettered, and the requester gets an error;
* the message is terminated (:class:`~jetstream_fastapi.driver.Reject`, its last attempt failed, a
  delivery past ``max_deliver``): an error reply with the exception's type and text, after the dead
  letter is stored and before the term; the requester raises :class:`~jetstream_fastapi.errors.RemoteHandlerError`;
* an attempt that will be retried, or ``None`` returned: nothing is sent.

A requester that gave up is no one's problem: its reply goes to an address nobody listens on.
Imports nothing from ``nats``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Awaitable, Callable

from ..backends.base import Backend, Outgoing
from ..driver import MSG_ID_HEADER, Message, Payload, PubAck
from ..errors import (
    InvalidArgumentError,
    NotConnectedError,
    PayloadTooLargeError,
    PublishTimeoutError,
    RemoteHandlerError,
    ReplyTimeoutError,
)
from ..observability.logs import message_extra
from .payloads import coerce_message, headers_size
from .subjects import check_subject, control_line_length

logger = logging.getLogger("jetstream_fastapi")

REPLY_TO = "Request-Reply-To"
"""The header of a stored request that names its reply address."""
REQUEST_MSG_ID = "Request-Msg-Id"
REQUEST_STREAM = "Request-Stream"
REQUEST_SEQUENCE = "Request-Sequence"
REQUEST_ATTEMPT = "Request-Attempt"
ERROR_TYPE = "Request-Error-Type"
"""On an error reply: the type name of the handler's exception."""
ERROR = "Request-Error"
_MAX_ERROR_TEXT = 1024
_TOKEN_BYTES = 16  # 128 bits: not guessable by anyone who sees other requests' addresses
_MAX_ADDRESS_TOKEN = 64
"""The longest inbox id or token of a reply address answered (``request()`` makes 22 to 32 characters)."""
_CAPTURE_TTL = 5.0
"""Seconds an inbox found captured by no stream is trusted without asking again."""
_CAPTURE_CACHE = 1024

Send = Callable[[Outgoing, float], Awaitable[PubAck]]


def request_timeout(timeout: object, default: float) -> float:
    """The total deadline of a request: ``timeout`` (a positive, finite number of seconds) or ``default``."""
    if timeout is None:
        return default
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not math.isfinite(timeout) or timeout <= 0:
        raise InvalidArgumentError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
    return float(timeout)


def check_request(message: Payload, headers: dict[str, str] | None) -> None:
    """Refuse a reply address set by the caller: ``request()`` sets it (header names are case-insensitive)."""
    given = [*(headers or {}), *(message.headers if isinstance(message, Message) else {})]
    if any(isinstance(name, str) and name.lower() == REPLY_TO.lower() for name in given):
        raise InvalidArgumentError(f"the {REPLY_TO} header is set by request() itself; do not pass it")


class Requester:
    """The requester's side of one broker: its inbox, and the requests waiting for a reply."""

    def __init__(self, backend: Backend, send: Send) -> None:
        self._backend = backend
        self._send = send
        self._inbox: str | None = None
        self._opening = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[Message]] = {}
        self.late_replies = 0
        """Replies that found nobody waiting: the requester gave up, or a redelivered request answered twice."""

    @property
    def waiting(self) -> int:
        """Requests waiting for their reply now."""
        return len(self._waiting)

    async def request(self, outgoing: Outgoing, timeout: float) -> Message:
        """Store ``outgoing`` with a reply address and return the reply, all within ``timeout`` seconds."""
        clock = self._backend.clock
        deadline = clock.now() + timeout
        token = secrets.token_hex(_TOKEN_BYTES)
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[token] = answer

        def expire() -> None:
            if not answer.done():
                answer.set_exception(TimeoutError())

        timer = clock.call_later(timeout, expire)
        ack: PubAck | None = None
        msg_id = outgoing.headers[MSG_ID_HEADER]
        try:
            inbox = await self._open_inbox()
            outgoing.headers[REPLY_TO] = f"{inbox}.{token}"
            size = len(outgoing.body) + headers_size(outgoing.headers)
            if size > self._backend.max_payload:
                raise PayloadTooLargeError(outgoing.subject, size, self._backend.max_payload)
            ack = await self._send(outgoing, max(0.0, deadline - clock.now()))
            reply = await answer
        except PublishTimeoutError as error:
            raise ReplyTimeoutError(outgoing.subject, timeout, msg_id, None) from error
        except TimeoutError:
            if not answer.done():
                raise  # not our deadline's
            raise ReplyTimeoutError(outgoing.subject, timeout, msg_id, ack) from None
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
            if not answer.done():
                answer.cancel()
            elif not answer.cancelled():
                answer.exception()  # retrieved: no "exception was never retrieved" warning
        return _reply(reply, outgoing.subject)

    async def _open_inbox(self) -> str:
        if self._inbox is None:
            async with self._opening:
                if self._inbox is None:
                    self._inbox = await self._backend.open_inbox(self._received)
        return self._inbox

    def _received(self, token: str, message: Message) -> None:
        answer = self._waiting.pop(token, None)
        if answer is None or answer.done():
            self.late_replies += 1
            return
        answer.set_result(message)

    def forget(self) -> None:
        """The broker disconnected: the waiting requests fail, and the next one opens a new inbox."""
        self._inbox = None
        waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            if not answer.done():
                answer.set_exception(NotConnectedError("the broker disconnected while waiting for the reply"))


def _reply(message: Message, subject: str) -> Message:
    """The reply as the requester gets it; an error reply raises :class:`RemoteHandlerError`."""
    headers = message.headers
    error_type = headers.get(ERROR_TYPE)
    if error_type is None:
        return message
    sequence, attempts = headers.get(REQUEST_SEQUENCE, "0"), headers.get(REQUEST_ATTEMPT, "0")
    raise RemoteHandlerError(
        subject,
        error_type,
        headers.get(ERROR, ""),
        stream=headers.get(REQUEST_STREAM, ""),
        sequence=int(sequence) if sequence.isdigit() else 0,
        attempts=int(attempts) if attempts.isdigit() else 0,
    )


class Replier:
    """The consumer's side: a handler's answer (or its failure) as a reply, sent through the backend."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._free: dict[str, float] = {}  # inbox -> until when no stream is known to capture it

    async def allows(self, request: Message, address: str) -> bool:
        """Whether ``address`` is one ``request()`` makes, so may be answered; a warning says why not.
        Raises when the server cannot be asked whether a stream captures it."""
        refusal = self._refusal(address)
        if refusal is None and await self._captured(address):
            refusal = "a stream captures it: the reply would be stored"
        if refusal is None:
            return True
        shown = address if len(address) <= 80 else f"{address[:80]}... ({len(address)} characters)"
        logger.warning(
            "not answering the request on %s: reply address %r refused, %s; handled as a plain message",
            request.subject,
            shown,
            refusal,
            extra=message_extra(request),
        )
        return False

    def _refusal(self, address: str) -> str | None:
        """Why ``address`` is not of the shape ``request()`` makes, or ``None`` if it is."""
        prefix = self._backend.inbox_prefix
        if len(address) > len(prefix) + 2 * (_MAX_ADDRESS_TOKEN + 1):
            return "longer than any address request() makes"
        if address.startswith("$"):
            return "a system subject"
        if not address.startswith(prefix + "."):
            return f"not under the inbox prefix {prefix!r}"
        try:
            check_subject(address, wildcards=False)
        except InvalidArgumentError as error:
            return str(error)
        if address.count(".", len(prefix) + 1) != 1:
            return "not of the shape <inbox prefix>.<inbox>.<token>"
        if control_line_length(address) > self._backend.max_control_line:
            return "longer than the server's control line"  # (a prefix bounded in length never gets here)
        return None

    async def _captured(self, address: str) -> bool:
        """Whether a stream captures an address of this inbox; an inbox found free is trusted for a while."""
        inbox = address.rpartition(".")[0]
        now = self._backend.clock.now()
        if self._free.get(inbox, 0.0) > now:
            return False
        if await self._backend.captures(f"{inbox}.*"):
            return True
        if len(self._free) >= _CAPTURE_CACHE:
            self._free.clear()  # many inboxes (a flood of forged ones): start over, bounded
        self._free[inbox] = now + _CAPTURE_TTL
        return False

    def encode(self, request: Message, result: object) -> Outgoing | Exception:
        """The reply carrying ``result``, or the error saying why ``result`` cannot be one."""
        try:
            body, headers = coerce_message(result, None)  # type: ignore[arg-type]  # any value: checked here
        except Exception as error:  # not a payload, or a model that does not serialize
            return InvalidArgumentError(f"the handler's return value cannot be a reply: {error}")
        headers.update(_about(request))
        size = len(body) + headers_size(headers)
        if size > self._backend.max_payload:
            return PayloadTooLargeError(request.subject, size, self._backend.max_payload)
        return Outgoing(request.subject, body, headers)

    async def send(self, address: str, reply: Outgoing) -> None:
        """Send ``reply``; raises when it cannot be sent (the caller naks the request)."""
        await self._backend.reply(address, reply)

    async def fail(self, request: Message, error: BaseException | None, address: str) -> None:
        """Tell the requester that its request failed for good; never raises (the message is terminated
        anyway, and its dead letter holds the record)."""
        text = " ".join(str(error).split())[:_MAX_ERROR_TEXT] if error is not None else ""
        headers = {**_about(request), ERROR_TYPE: type(error).__name__ if error is not None else "Error"}
        if text:
            headers[ERROR] = text
        try:
            await self._backend.reply(address, Outgoing(request.subject, b"", headers))
        except Exception as failure:
            logger.warning(
                "could not send the error reply of the request on %s: %s",
                request.subject,
                self._backend.describe(failure),
                extra=message_extra(request),
            )


def _about(request: Message) -> dict[str, str]:
    """The headers that tie a reply to its stored request."""
    headers = {REQUEST_ATTEMPT: str(request.attempt)}
    if request.msg_id:
        headers[REQUEST_MSG_ID] = request.msg_id
    delivery = request.delivery
    if delivery is not None:
        headers[REQUEST_STREAM] = delivery.stream
        headers[REQUEST_SEQUENCE] = str(delivery.sequence)
    return headers
