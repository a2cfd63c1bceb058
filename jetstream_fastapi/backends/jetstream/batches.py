"""Atomic batch publish on the wire (ADR-50): ``Nats-Batch-Id``, ``Nats-Batch-Sequence``, ``Nats-Batch-Commit``.

As measured on nats-server 2.15: the messages before the last are plain publishes; the last, with
``Nats-Batch-Commit: 1``, is a request whose answer is ``{"stream", "seq" (the last), "batch", "count"}``
for the whole batch, or one error and nothing stored (a failed expectation anywhere: ``10071``; a stream
without ``allow_atomic``: ``10174``; over 1,000 messages: ``10199``; a msg id stored before, that is a
retried batch: ``10201``). A batch the server does not see completed is dropped by it, never stored in part.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import nats.errors
from nats.aio.client import Client as NATS

from ...core.payloads import headers_size
from ...driver import PubAck
from ...errors import BatchStoredError, PayloadTooLargeError, PublishError, PublishTimeoutError, StreamFlagError
from ..base import Outgoing
from .publish_options import publish_error, wire_headers
from .streams import StreamRegistry

_DUPLICATE_MSG_ID = 10201


async def send_batch(
    nc: NATS,
    registry: StreamRegistry,
    stream: str,
    batch_id: str,
    messages: Sequence[Outgoing],
    max_payload: int,
    timeout: float,
) -> list[PubAck]:
    """Send ``messages`` as batch ``batch_id`` to ``stream`` and return every PubAck (see the module)."""
    config = await registry.config_of(stream)
    if not config.allow_atomic:
        raise StreamFlagError(messages[0].subject, stream, "atomic batches", "allow_atomic")
    prepared: list[Outgoing] = []
    for number, message in enumerate(messages, 1):
        headers = {**message.headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(number)}
        if message.conditions is not None:
            headers.update(wire_headers(message.conditions))
        if number == len(messages):
            headers["Nats-Batch-Commit"] = "1"
        size = len(message.body) + headers_size(headers)
        if size > max_payload:
            raise PayloadTooLargeError(message.subject, size, max_payload)
        prepared.append(Outgoing(message.subject, message.body, headers))
    commit = prepared[-1]
    try:
        async with asyncio.timeout(timeout):
            for message in prepared[:-1]:
                await nc.publish(message.subject, message.body, headers=message.headers)
            reply = await nc.request(commit.subject, commit.body, headers=commit.headers, timeout=timeout)
    except TimeoutError:
        raise PublishTimeoutError(commit.subject, timeout, batch_id) from None
    except nats.errors.NoRespondersError:
        raise PublishError(commit.subject, f"no stream answered the commit of batch {batch_id!r}") from None
    response = json.loads(reply.data)
    error = response.get("error")
    if error is not None:
        if error.get("err_code") == _DUPLICATE_MSG_ID:
            raise BatchStoredError(batch_id, stream)
        raise publish_error(commit.subject, response)
    last, count = int(response["seq"]), int(response["count"])
    return [PubAck(stream=response["stream"], seq=last - count + number) for number in range(1, count + 1)]
