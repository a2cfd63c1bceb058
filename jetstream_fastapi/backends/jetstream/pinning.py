"""The pull worker's side of a pinned-client priority group (ADR-42), for ``exclusive=True``.

What the server expects of a member (nats-server 2.11+, ``server/consumer.go``): every pull request
carries ``group``; the server pins one request's client, puts the pin id in a ``Nats-Pin-Id`` header on
each message it sends there, and holds every request without that id. The pinned member sends ``id`` in
its pulls; each such pull renews the pin for ``priority_timeout``. A pull with a stale id gets a ``423``
status, and the member pulls again without one, as a standby. The semantics are in
:mod:`~jetstream_fastapi.core.exclusive`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ...core.exclusive import LEASE
from .acks import SEND_ERRORS

logger = logging.getLogger("jetstream_fastapi")

PIN_HEADER = "Nats-Pin-Id"
WRONG_PIN = "423"


class Pin:
    """The pin of one worker's consumer: the group it pulls in and the pin id it holds, if any."""

    def __init__(self, nc: NATS, group: str, *, stream: str, consumer: str, api_prefix: str) -> None:
        self._nc = nc
        self.group = group
        self.id: str | None = None
        """The pin id the server gave this member; ``None``: a standby."""
        self._consumer = consumer
        self._unpin_subject = f"{api_prefix}.CONSUMER.UNPIN.{stream}.{consumer}"
        self._pull_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._last_pull = 0.0
        self._sub: Subscription | None = None
        self._reply = ""

    @property
    def interval(self) -> float:
        """How often the holder renews the pin when it has no other reason to pull."""
        return LEASE / 4

    def fields(self) -> dict[str, object]:
        """The pull request's priority-group fields, and notes that a pull renews the pin."""
        self._last_pull = time.monotonic()
        return {"group": self.group} if self.id is None else {"group": self.group, "id": self.id}

    def seen(self, headers: dict[str, str] | None) -> bool:
        """A message arrived with ``headers``; True if it carries a pin id other than the one held."""
        pin = (headers or {}).get(PIN_HEADER)
        if pin is None or pin == self.id:
            return False
        if self.id is None:
            logger.info("consumer %s: this instance is now the active one (pinned)", self._consumer)
        self.id = pin
        return True

    def lost(self) -> None:
        """The server answered ``423``: the pin is someone else's (or expired)."""
        if self.id is not None:
            logger.warning("consumer %s: the pin moved to another instance; standing by", self._consumer)
        self.id = None

    async def start(self, inbox: str) -> None:
        """Listen for the answers to keep-alive pulls (a ``423`` there means the pin is gone)."""
        self._reply = f"{inbox}.pin"
        self._sub = await self._nc.subscribe(self._reply, cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        if (msg.headers or {}).get("Status") == WRONG_PIN:
            self.lost()

    async def keep_alive(self, now: float) -> None:
        """Renew a held pin if no pull did in the last :attr:`interval`: a pull that delivers nothing
        (``max_bytes`` 1 is smaller than any message; ``no_wait``: answered at once)."""
        if self.id is None or now - self._last_pull < self.interval:
            return
        body = {"batch": 1, "max_bytes": 1, "no_wait": True, **self.fields()}
        with contextlib.suppress(*SEND_ERRORS):  # the next tick tries again, well within the lease
            await self._nc.publish(self._pull_subject, json.dumps(body).encode(), self._reply)

    async def release(self) -> None:
        """Give the pin up (the worker stopped and its handlers are done): a standby takes over at once
        instead of after the lease."""
        if self._sub is not None:
            with contextlib.suppress(*SEND_ERRORS):
                await self._sub.unsubscribe()
        if self.id is None:
            return
        self.id = None
        body = json.dumps({"group": self.group}).encode()
        with contextlib.suppress(TimeoutError, *SEND_ERRORS):  # the lease runs out instead
            await self._nc.request(self._unpin_subject, body, timeout=1.0)
