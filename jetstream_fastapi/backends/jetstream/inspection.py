"""What the server knows of every stream and consumer (not only this app's): for the command-line tool.

Reads stream and consumer info through the backend's JetStream manager; this library's handler options
come from the consumer's metadata (written when the consumer is created or updated, see
:mod:`.consumers`), so they show for consumers this library made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.js.api import ConsumerInfo

from ...errors import StreamNotFoundError
from ..base import ConsumerState
from .consumers import OPTIONS_METADATA

if TYPE_CHECKING:
    from .backend import JetStreamBackend


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """One stream on the server."""

    name: str
    subjects: list[str]
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    consumers: int
    storage: str
    retention: str


@dataclass(frozen=True, slots=True)
class ConsumerSummary:
    """One consumer on the server: its figures, its server-side config, and this library's options."""

    state: ConsumerState
    durable: bool
    filter_subject: str
    ack_wait: float | None
    max_deliver: int | None
    max_ack_pending: int | None
    options: dict[str, Any] = field(default_factory=dict)
    """This library's handler options (``batch_size``, ``concurrency``, ...), empty for other consumers."""


class Inspector:
    """Lists streams and consumers through one connected :class:`JetStreamBackend`."""

    def __init__(self, backend: JetStreamBackend) -> None:
        self._backend = backend

    async def streams(self) -> list[StreamSummary]:
        """Every stream, by name."""
        jsm = self._backend.manager()
        summaries = []
        for info in await jsm.streams_info():
            config, state = info.config, info.state
            summaries.append(
                StreamSummary(
                    name=config.name or "",
                    subjects=list(config.subjects or []),
                    messages=state.messages,
                    bytes=state.bytes,
                    first_seq=state.first_seq,
                    last_seq=state.last_seq,
                    consumers=state.consumer_count,
                    storage=getattr(config.storage, "value", str(config.storage)),
                    retention=getattr(config.retention, "value", str(config.retention)),
                )
            )
        return sorted(summaries, key=lambda s: s.name)

    async def consumers(self, stream: str) -> list[ConsumerSummary]:
        """Every consumer of ``stream``, by name; :class:`StreamNotFoundError` if there is no such stream."""
        jsm = self._backend.manager()
        try:
            await jsm.stream_info(stream)
            infos = await jsm.consumers_info(stream)
        except nats.js.errors.NotFoundError:
            raise StreamNotFoundError(stream) from None
        return sorted((self._summary(stream, info) for info in infos), key=lambda s: s.state.name)

    def _summary(self, stream: str, info: ConsumerInfo) -> ConsumerSummary:
        config = info.config
        options: dict[str, Any] = {}
        raw = (config.metadata or {}).get(OPTIONS_METADATA)
        if raw:
            try:
                options = json.loads(raw)
            except ValueError:
                options = {}
        return ConsumerSummary(
            state=self._backend.state_of(stream, info),
            durable=bool(config.durable_name),
            filter_subject=config.filter_subject or ", ".join(config.filter_subjects or []),
            ack_wait=config.ack_wait,
            # While this library dead-letters, the server's limit is lifted and the handler's is in the metadata.
            max_deliver=options.get("max_deliver", config.max_deliver) if isinstance(options, dict) else None,
            max_ack_pending=config.max_ack_pending,
            options=options if isinstance(options, dict) else {},
        )
