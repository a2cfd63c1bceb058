""":class:`InMemoryBroker`: the broker's front over the memory backend (this process's memory, for tests)."""

from __future__ import annotations

from typing import Unpack

from ...clock import Clock
from ...core.broker import BaseBroker
from ...core.options import BrokerOptions, FrontSettings
from ...core.subjects import DEFAULT_INBOX_PREFIX, DEFAULT_MAX_CONTROL_LINE
from .backend import DEFAULT_MAX_PAYLOAD, MemoryBackend
from .faults import Faults


class InMemoryBroker(BaseBroker):
    """The broker front over memory: the same contract, options and errors as :class:`JetStreamBroker`.

    Besides the broker options: ``duplicate_window`` (seconds a ``msg_id`` is remembered, 120 as on a
    server), ``max_payload`` (bytes, headers included, 1 MiB as on a server), ``max_control_line`` (bytes of
    a protocol line, 4096 as on a server: bounds subjects), ``inbox_prefix`` (of request reply addresses,
    ``"_INBOX"`` as nats-py) and ``clock`` (default: real monotonic time) that drives every timer,
    ``server_version`` (a ``(major, minor, patch)`` to behave as, for testing the feature checks; default:
    every feature). ``faults`` injects network and server faults::

        broker = InMemoryBroker(backoff=Backoff(initial=0.01))
        async with broker:
            await broker.subscribe("orders.created", handle, queue="order-processor")
            await broker.publish("orders.created", b"{}")
            await broker.wait_until_idle()
    """

    def __init__(
        self,
        *,
        duplicate_window: float = 120.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_control_line: int = DEFAULT_MAX_CONTROL_LINE,
        inbox_prefix: str = DEFAULT_INBOX_PREFIX,
        clock: Clock | None = None,
        server_version: tuple[int, int, int] | None = None,
        **options: Unpack[BrokerOptions],
    ) -> None:
        settings = FrontSettings.from_options(options, "InMemoryBroker()")
        backend = MemoryBackend(
            settings.streams,
            duplicate_window=duplicate_window,
            max_payload=max_payload,
            max_control_line=max_control_line,
            inbox_prefix=inbox_prefix,
            clock=clock,
            server_version=server_version,
        )
        super().__init__(backend, settings)
        self._memory = backend
        self.clock: Clock = backend.clock
        """The clock of every timer (nak delays, ack wait, in-progress, duplicate window)."""
        self.faults: Faults = backend.faults
        """Fault injection: see :class:`~jetstream_fastapi.backends.memory.faults.Faults`."""

    def idle(self) -> bool:
        """Whether nothing is running, nothing is waiting for redelivery, and no subscribed consumer has
        messages waiting (what :meth:`wait_until_idle` waits for)."""
        return self._memory.idle()

    def __repr__(self) -> str:
        state = "disconnected" if not self._opened else ("connected" if self.is_connected else "reconnecting")
        streams = {name: len(stream.messages) for name, stream in self._memory.streams.items()}
        return f"InMemoryBroker(state={state!r}, streams={streams}, subscriptions={len(self._subscriptions)})"
