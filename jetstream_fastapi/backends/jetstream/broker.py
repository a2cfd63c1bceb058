""":class:`JetStreamBroker`: the broker's front over the JetStream backend (a NATS server through nats-py)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from nats.aio.client import Client as NATS

from ...core.broker import BaseBroker
from ...core.options import BROKER_OPTIONS, BrokerOptions, FrontSettings
from ...core.redaction import redact_url
from ...errors import UnknownOptionError
from .backend import JetStreamBackend
from .inspection import Inspector

# nats.connect's options, except those the broker sets itself.
CONNECT_OPTIONS = frozenset(inspect.signature(NATS.connect).parameters) - {
    "self",
    "servers",
    "connect_timeout",  # a broker option (BrokerOptions)
    "error_cb",
    "disconnected_cb",
    "reconnected_cb",
    "closed_cb",
}


class JetStreamBroker(BaseBroker):
    """Publishes with PubAck and consumes with pull workers on a NATS JetStream server.

    ``connect()``/``disconnect()`` are explicit and idempotent (or use ``async with``); the broker options
    (:class:`~jetstream_fastapi.core.options.BrokerOptions`, the same as :class:`~jetstream_fastapi.InMemoryBroker`'s)
    are the defaults of every ``subscribe``. ``connect_options`` go to ``nats.connect`` unchanged
    (``user_credentials``, ``tls``, ``token``, ``user``, ``password``, ``nkeys_seed``, ``name``, ...); they may
    also be given as keywords of their own (untyped: a type checker flags them). An unknown name raises
    :class:`~jetstream_fastapi.UnknownOptionError` at once. Secrets never appear in logs, ``repr`` or errors::

        broker = JetStreamBroker("nats://localhost:4222", batch_size=10, connect_options={"name": "orders"})
        async with broker:
            ack = await broker.publish("orders.created", b"{}")
    """

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://localhost:4222",
        *,
        connect_options: Mapping[str, Any] | None = None,
        **options: Unpack[BrokerOptions],
    ) -> None:
        given: dict[str, Any] = dict(options)
        broker_options = {name: value for name, value in given.items() if name in BROKER_OPTIONS}
        # nats.connect options given as keywords of their own (as before connect_options existed).
        connect = {name: value for name, value in given.items() if name not in BROKER_OPTIONS}
        connect.update(connect_options or {})
        for name in connect:
            if name not in CONNECT_OPTIONS:
                raise UnknownOptionError("JetStreamBroker()", name, BROKER_OPTIONS | CONNECT_OPTIONS)
        settings = FrontSettings.from_options(broker_options, "JetStreamBroker()")
        backend = JetStreamBackend(
            servers, connect_timeout=settings.connect_timeout, connect_options=connect, streams=settings.streams
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
