""":class:`JetStreamBroker`: the broker's front over the JetStream backend (a NATS server through nats-py)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client as NATS

from ...core.broker import BaseBroker
from ...core.options import BROKER_OPTIONS, FrontSettings
from ...core.redaction import redact_url
from ...core.subscription import Subscription
from ...errors import UnknownOptionError
from .backend import JetStreamBackend
from .inspection import Inspector

# nats.connect's options, except those the broker sets itself.
CONNECT_OPTIONS = frozenset(inspect.signature(NATS.connect).parameters) - {
    "self",
    "servers",
    "error_cb",
    "disconnected_cb",
    "reconnected_cb",
    "closed_cb",
}


class JetStreamBroker(BaseBroker):
    """Publishes with PubAck and consumes with pull workers on a NATS JetStream server.

    ``connect()``/``disconnect()`` are explicit and idempotent (or use ``async with``); the broker options
    (:class:`~jetstream_fastapi.core.options.BrokerOptions`, the README's option table) are the defaults
    of every ``subscribe``. Any other keyword must be a ``nats.connect`` option (``user_credentials``,
    ``tls``, ``token``, ``user``, ``password``, ``nkeys_seed``, ``name``, ...) and goes to it unchanged; an
    unknown one raises :class:`~jetstream_fastapi.UnknownOptionError` at once. Secrets never appear in
    logs, ``repr`` or errors::

        broker = JetStreamBroker("nats://localhost:4222", batch_size=10, fetch_wait=5.0)
        async with broker:
            ack = await broker.publish("orders.created", b"{}")
    """

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://localhost:4222",
        *,
        connect_timeout: float = 5.0,
        **options: Any,
    ) -> None:
        broker_options = {name: value for name, value in options.items() if name in BROKER_OPTIONS}
        connect_options = {name: value for name, value in options.items() if name not in BROKER_OPTIONS}
        for name in connect_options:
            if name not in CONNECT_OPTIONS:
                raise UnknownOptionError("JetStreamBroker()", name, BROKER_OPTIONS | CONNECT_OPTIONS)
        settings = FrontSettings.from_options(broker_options, "JetStreamBroker()")
        backend = JetStreamBackend(
            servers, connect_timeout=connect_timeout, connect_options=connect_options, streams=settings.streams
        )
        super().__init__(backend, settings)
        self.servers = backend.servers
        self._jetstream = backend

    def inspector(self) -> Inspector:
        """Lists every stream and consumer on the server, not only this broker's (the CLI uses it)."""
        self._require()
        return Inspector(self._jetstream)

    def __repr__(self) -> str:
        state = "disconnected" if not self._opened else ("connected" if self.is_connected else "reconnecting")
        servers = [redact_url(url) for url in self.servers]
        return f"JetStreamBroker(servers={servers!r}, state={state!r}, subscriptions={len(self._subscriptions)})"


JetStreamSubscription = Subscription
"""A subscription of a :class:`JetStreamBroker` (the one :class:`~jetstream_fastapi.core.broker.Subscription`)."""
