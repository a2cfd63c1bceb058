"""Pipelined publishing: many messages in flight on one reply subscription, every PubAck awaited.

``asyncio.gather`` over ``js.publish`` costs a task, a fresh inbox token and a timeout handle per
message; nats-py's ``publish_async`` has no ack timeout and hangs forever when the server answers with an
error (nats.py #985). Here one wildcard inbox subscription receives the replies of a bounded window of
publishes, each reply settles its message by index, and a message whose reply has not come within
``timeout`` of being sent is reported as timed out: no future is ever left hanging.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ...driver import PubAck
from ...errors import PublishError
from ..base import Outgoing
from .pubacks import is_no_responders
from .publish_options import SCHEDULE_TARGET_HEADER, publish_error


class NoResponders(Exception):
    """No stream answered this publish (yet): the broker retries it through its single-publish path."""


class Pipeline:
    """Publishes ``messages`` with at most ``window`` awaiting their PubAck."""

    def __init__(self, nc: NATS, messages: Sequence[Outgoing], *, window: int, timeout: float) -> None:
        self._nc = nc
        self._messages = messages
        self._window = window
        self._timeout = timeout
        self.results: list[PubAck | BaseException | None] = [None] * len(messages)
        self._sent_at: dict[int, float] = {}  # index -> monotonic time, for messages awaiting a reply
        self._changed = asyncio.Event()
        self._prefix = ""

    async def run(self) -> list[PubAck | BaseException | None]:
        """Send everything; return, by index, a PubAck or the exception of each message."""
        self._prefix = self._nc.new_inbox() + "."
        subscription = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)
        publish = self._nc.publish
        try:
            for index, message in enumerate(self._messages):
                while len(self._sent_at) >= self._window:
                    await self._wait_for_reply()
                self._sent_at[index] = time.monotonic()
                await publish(message.subject, message.body, f"{self._prefix}{index}", message.headers)
            while self._sent_at:
                await self._wait_for_reply()
        finally:
            await subscription.unsubscribe()
        return self.results

    async def _wait_for_reply(self) -> None:
        oldest = min(self._sent_at.values())
        remaining = oldest + self._timeout - time.monotonic()
        if remaining > 0:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
                return
            except TimeoutError:
                pass
        now = time.monotonic()
        for index, sent in list(self._sent_at.items()):
            if now - sent >= self._timeout:
                del self._sent_at[index]
                self.results[index] = TimeoutError(f"no PubAck within {self._timeout:g}s")

    async def _on_reply(self, msg: Msg) -> None:
        index = int(msg.subject[len(self._prefix) :])
        if self._sent_at.pop(index, None) is None:
            return  # already timed out
        self._changed.set()
        if is_no_responders(msg):
            self.results[index] = NoResponders()
            return
        if not msg.data:
            status = (msg.headers or {}).get("Status")
            self.results[index] = PublishError(self._messages[index].subject, f"unexpected reply status {status}")
            return
        response = json.loads(msg.data)
        if response.get("error") is not None:
            message = self._messages[index]
            self.results[index] = publish_error(message.headers.get(SCHEDULE_TARGET_HEADER, message.subject), response)
        else:
            self.results[index] = PubAck(response["stream"], response["seq"], response.get("duplicate", False))
