"""The publish path of :class:`~jetstream_fastapi.JetStreamBroker`: check, encode, request the PubAck, retry.

One :class:`Publisher` per connection. A message gets a msg id (a per-connection random prefix and a
counter: unique without a uuid per message) so that retries of a transient failure are stored once; the
stream of each subject is learned from the first PubAck and cached, so a publish costs one request.
"No responders" means no stream answered: either none captures the subject (found with one lookup, then
provisioned or reported with :class:`NoStreamError`) or the stream is between leaders (wait and retry).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable

import nats.errors
from nats.aio.client import Client as NATS

from .driver import MSG_ID_HEADER, Payload, PubAck
from .errors import (
    InvalidArgumentError,
    NotConnectedError,
    PayloadTooLargeError,
    PublishBatchError,
    PublishError,
    PublishTimeoutError,
)
from .pipeline import NoResponders, Outgoing, Pipeline
from .publishing import check_msg_id, coerce_message
from .replies import Replies, is_no_responders
from .streams import StreamRegistry
from .subjects import check_subject

# Retries of a publish that met "no responders" while the stream exists (restart, leader election).
_NO_RESPONDERS_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)


_MSG_ID_ONLY = len(b"NATS/1.0\r\n\r\n") + len(MSG_ID_HEADER) + 4


def _headers_size(headers: dict[str, str]) -> int:
    """Bytes of the ``NATS/1.0`` header block nats-py sends for ``headers``."""
    size = len(b"NATS/1.0\r\n\r\n")
    for key, value in headers.items():
        size += len(key.strip().encode()) + len(value.strip().encode()) + 4  # ": " and CRLF
    return size


class Publisher:
    """Publishes on one connection with a default deadline of ``timeout`` seconds."""

    def __init__(self, nc: NATS, registry: StreamRegistry, *, timeout: float) -> None:
        self._nc = nc
        self._registry = registry
        self._timeout = timeout
        self._id_prefix = f"{uuid.uuid4().hex}-"
        self._id_counter = 0
        self._replies = Replies(nc)

    async def start(self) -> None:
        """Subscribe the inbox that receives the PubAcks."""
        await self._replies.start()

    async def publish(
        self,
        subject: str,
        message: Payload,
        msg_id: str | None,
        headers: dict[str, str] | None,
        timeout: float | None,
    ) -> PubAck:
        """One message: see :meth:`JetStreamBroker.publish`."""
        outgoing = self._prepare(subject, message, msg_id, headers)
        return await self._send(outgoing, self._timeout if timeout is None else timeout)

    async def publish_many(
        self, messages: Iterable[tuple[str, Payload]], window: int, timeout: float | None
    ) -> list[PubAck]:
        """A batch: see :meth:`JetStreamBroker.publish_many`."""
        if not isinstance(window, int) or window < 1:
            raise InvalidArgumentError(f"window must be a positive integer, got {window!r}")
        nc, registry = self._nc, self._registry
        outgoing = [self._prepare(subject, message, None, None) for subject, message in messages]
        total = self._timeout if timeout is None else timeout
        results = await Pipeline(nc, outgoing, window=window, timeout=total).run()
        acks: list[PubAck | None] = []
        errors: dict[int, BaseException] = {}
        for index, result in enumerate(results):
            if isinstance(result, NoResponders):
                try:
                    result = await self._send(outgoing[index], total)
                except Exception as error:
                    result = error
            elif isinstance(result, TimeoutError):
                out = outgoing[index]
                result = PublishTimeoutError(out.subject, total, out.headers[MSG_ID_HEADER])
            if isinstance(result, PubAck):
                acks.append(result)
                if registry.cached(outgoing[index].subject) is None:
                    registry.remember(outgoing[index].subject, result.stream)
            else:
                acks.append(None)
                errors[index] = result if result is not None else RuntimeError("no outcome")
        if errors:
            raise PublishBatchError(acks, errors)
        return [ack for ack in acks if ack is not None]

    def _prepare(
        self,
        subject: str,
        message: Payload,
        msg_id: str | None,
        headers: dict[str, str] | None,
    ) -> Outgoing:
        """Check and encode one message, giving it a msg id; raises before anything is sent."""
        if self._registry.cached(subject) is None:
            check_subject(subject, wildcards=False)
        body, merged = coerce_message(message, headers)
        if msg_id is None:
            self._id_counter += 1
            msg_id = f"{self._id_prefix}{self._id_counter}"
        else:
            check_msg_id(msg_id)
        merged[MSG_ID_HEADER] = msg_id
        # The server's limit covers headers and body; past it the server drops the connection and nats-py
        # closes the client for good, so check here (nats-py itself checks the body only).
        # The usual case, the msg id as the only header, without walking the dict.
        size = len(body) + (_headers_size(merged) if len(merged) > 1 else _MSG_ID_ONLY + len(msg_id))
        limit = self._nc.max_payload
        if size > limit:
            raise PayloadTooLargeError(subject, size, limit)
        return Outgoing(subject, body, merged)

    async def _send(self, outgoing: Outgoing, total: float) -> PubAck:
        """Request a PubAck for ``outgoing``, retrying transient failures within ``total`` seconds.

        The whole loop runs under one deadline, so that no retry pause, lookup or provisioning carries the
        call past ``total`` (a pause was not clamped before, and a publish could overshoot by a second).
        """
        msg_id = outgoing.headers[MSG_ID_HEADER]
        deadline = asyncio.get_running_loop().time() + total
        try:
            async with asyncio.timeout_at(deadline):
                return await self._attempts(outgoing, total, deadline)
        except TimeoutError:
            raise PublishTimeoutError(outgoing.subject, total, msg_id) from None

    async def _attempts(self, outgoing: Outgoing, total: float, deadline: float) -> PubAck:
        registry = self._registry
        subject, body, merged = outgoing.subject, outgoing.body, outgoing.headers
        loop = asyncio.get_running_loop()
        no_responders = 0
        while True:
            remaining = deadline - loop.time()
            # Each attempt gets a share of the deadline, so that a request lost with a dying connection is
            # sent again; the msg id makes the server store it once whichever attempt lands.
            attempt_timeout = max(0.001, min(remaining, max(1.0, total / 3)))
            try:
                reply = await self._replies.request(subject, body, merged, attempt_timeout)
            except TimeoutError:
                if loop.time() >= deadline:
                    raise
                continue
            except nats.errors.ConnectionClosedError:
                raise NotConnectedError("the NATS connection is closed") from None
            if is_no_responders(reply):
                await self._no_responders(subject, no_responders, deadline)
                no_responders += 1
                continue
            response = json.loads(reply.data)
            error = response.get("error")
            if error is not None:
                raise PublishError(subject, error.get("description", str(error)), error.get("code"))
            stream = response["stream"]
            if registry.cached(subject) is None:
                registry.remember(subject, stream)
            return PubAck(stream=stream, seq=response["seq"], duplicate=response.get("duplicate", False))

    async def _no_responders(self, subject: str, attempt: int, deadline: float) -> None:
        """No stream answered: find or provision one, or wait out a restart; raise if neither helps."""
        registry = self._registry
        if attempt == 0:
            registry.forget()
        try:
            # Bounded well below the deadline: during a leader election the lookup itself may hang, and the
            # publish should be retried as soon as a new leader answers.
            lookup = min(1.0, max(0.01, deadline - asyncio.get_running_loop().time()))
            stream = await asyncio.wait_for(registry.find(subject), timeout=lookup)
        except (TimeoutError, nats.errors.Error):  # includes nats.js.errors.APIError
            stream = "?"  # JetStream itself is not answering yet (restart, election): wait and retry
        if stream is None:
            await registry.stream_for(subject)  # provisions, or raises NoStreamError naming the subject
            return
        await asyncio.sleep(_NO_RESPONDERS_DELAYS[min(attempt, len(_NO_RESPONDERS_DELAYS) - 1)])
