"""The JetStream backend's publish path: request the PubAck of a message the front prepared, and retry.

One :class:`Publisher` per connection. Each message comes with its msg id (given by the front), so that
retries of a transient failure are stored once; the stream of each subject is learned from the first
PubAck and cached, so a publish costs one request.
"No responders" means no stream answered: either none captures the subject (found with one lookup, then
provisioned or reported with :class:`NoStreamError`) or the stream is between leaders (wait and retry).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ...driver import MSG_ID_HEADER, PubAck
from ...errors import NotConnectedError, PublishTimeoutError
from ..base import Outgoing
from .pipeline import NoResponders, Pipeline
from .pubacks import PubAckInbox, is_no_responders
from .publish_options import SCHEDULE_TARGET_HEADER, publish_error
from .streams import StreamRegistry

# Retries of a publish that met "no responders" while the stream exists (restart, leader election).
_NO_RESPONDERS_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)


def _share(remaining: float, total: float) -> float:
    """One attempt's share of the deadline: a request lost with a dying connection is sent again (the msg
    id makes the server store it once whichever attempt lands)."""
    return max(0.001, min(remaining, max(1.0, total / 3)))


class Publisher:
    """Stores messages prepared by the broker's front on one connection."""

    def __init__(self, nc: NATS, registry: StreamRegistry) -> None:
        self._nc = nc
        self._registry = registry
        self._replies = PubAckInbox(nc)

    async def start(self) -> None:
        """Subscribe the inbox that receives the PubAcks."""
        await self._replies.start()

    async def send_many(self, outgoing: Sequence[Outgoing], window: int, total: float) -> list[PubAck | Exception]:
        """A batch with ``window`` in flight; by index, a PubAck or the error (a timeout as ``TimeoutError``)."""
        registry = self._registry
        results = await Pipeline(self._nc, outgoing, window=window, timeout=total).run()
        outcome: list[PubAck | Exception] = []
        for index, result in enumerate(results):
            if isinstance(result, NoResponders):
                # No stream answered (yet): the single-publish path finds or provisions it, or waits.
                try:
                    result = await self.send(outgoing[index], total)
                except Exception as error:
                    result = error
            scheduled = SCHEDULE_TARGET_HEADER in outgoing[index].headers
            if isinstance(result, PubAck) and not scheduled and registry.cached(outgoing[index].subject) is None:
                registry.remember(outgoing[index].subject, result.stream)
            if isinstance(result, PubAck | Exception):
                outcome.append(result)
            else:  # None (never left by the pipeline) or a BaseException that is not an Exception
                outcome.append(RuntimeError(f"no outcome: {result!r}"))
        return outcome

    async def send(self, outgoing: Outgoing, total: float) -> PubAck:
        """Request a PubAck for ``outgoing``, retrying transient failures within ``total`` seconds.

        The usual case, a first attempt answered in time, runs on that attempt's own timer. Anything else
        (no answer, "no responders") goes to the retry loop, which runs under one deadline, so that no
        retry pause, lookup or provisioning carries the call past ``total``.
        """
        msg_id = outgoing.headers[MSG_ID_HEADER]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        reply = await self._request(outgoing, _share(total, total))
        if reply is not None and not is_no_responders(reply):
            return self._answer(outgoing, reply)
        try:
            async with asyncio.timeout_at(deadline):
                return await self._attempts(outgoing, total, deadline)
        except TimeoutError:
            raise PublishTimeoutError(outgoing.subject, total, msg_id) from None

    async def _request(self, outgoing: Outgoing, timeout: float) -> Msg | None:
        """One attempt: the server's reply, or ``None`` if none came within ``timeout``."""
        try:
            return await self._replies.request(outgoing.subject, outgoing.body, outgoing.headers, timeout)
        except TimeoutError:
            return None
        except nats.errors.ConnectionClosedError:
            raise NotConnectedError("the NATS connection is closed") from None

    async def _attempts(self, outgoing: Outgoing, total: float, deadline: float) -> PubAck:
        loop = asyncio.get_running_loop()
        no_responders = 0
        while True:
            reply = await self._request(outgoing, _share(deadline - loop.time(), total))
            if reply is None:
                if loop.time() >= deadline:
                    raise TimeoutError
                continue
            if is_no_responders(reply):
                await self._no_responders(outgoing.subject, no_responders, deadline)
                no_responders += 1
                continue
            return self._answer(outgoing, reply)

    def _answer(self, outgoing: Outgoing, reply: Msg) -> PubAck:
        """The PubAck in ``reply``, or the publish error it says; the subject's stream is remembered."""
        response = json.loads(reply.data)
        target = outgoing.headers.get(SCHEDULE_TARGET_HEADER)  # a schedule: its subject is used once, not cached
        if response.get("error") is not None:
            raise publish_error(target or outgoing.subject, response)
        stream = response["stream"]
        registry = self._registry
        if target is None and registry.cached(outgoing.subject) is None:
            registry.remember(outgoing.subject, stream)
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
