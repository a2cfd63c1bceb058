"""The JetStream backend: a NATS server through nats-py (:class:`JetStreamBroker` is the front over it)."""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerInfo, StreamConfig
from nats.js.manager import JetStreamManager

from ...clock import Clock, MonotonicClock
from ...core.exclusive import GROUP
from ...core.options import StreamPolicy
from ...core.subjects import DEFAULT_INBOX_PREFIX, DEFAULT_MAX_CONTROL_LINE, check_inbox_prefix
from ...driver import PubAck
from ...errors import (
    ConnectError,
    ConsumerConfigError,
    InvalidArgumentError,
    JetStreamError,
    NotConnectedError,
    RequestTimeoutError,
)
from ..base import ConsumerSpec, ConsumerState, OnReply, Outgoing, PartitionedStream, Process, Stored, StreamFacts
from .batches import send_batch
from .connection import Connection
from .consumers import consumer_config, ensure_consumer
from .dead_letters import dead_letter_config
from .idle import consumer_idle
from .key_order import caught_up, ensure_partitioned_stream
from .keyvalue import KeyValues
from .publish_options import scheduled, with_wire_headers
from .publisher import Publisher
from .requests import open_inbox, send_reply
from .stored import last_on_subject, stored, stream_facts
from .streams import StreamMismatch, StreamRegistry
from .worker import PullWorker

logger = logging.getLogger("jetstream_fastapi")

# The JetStream API's account-info request: the cheapest question the server answers (see ping()).
_ACCOUNT_INFO = "$JS.API.INFO"
_DEFAULT_MAX_PAYLOAD = 1024 * 1024


class JetStreamBackend:
    """Stores and delivers through one nats-py connection: publisher, stream registry, pull workers."""

    name = "jetstream"

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        connect_timeout: float,
        connect_options: dict[str, Any],
        streams: StreamPolicy,
    ) -> None:
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        if not self.servers:
            raise InvalidArgumentError("servers must name at least one NATS URL")
        if not isinstance(connect_timeout, int | float) or connect_timeout <= 0:
            raise InvalidArgumentError(f"connect_timeout must be positive, got {connect_timeout!r}")
        for config in streams.declared:
            if not isinstance(config, StreamConfig) or not config.name or not config.subjects:
                raise InvalidArgumentError(f"streams must be StreamConfig objects with a name and subjects: {config!r}")
        self._streams = streams
        # The inboxes nats-py makes (requests' reply addresses) start with its inbox_prefix connect option.
        self.inbox_prefix = check_inbox_prefix(connect_options.get("inbox_prefix", DEFAULT_INBOX_PREFIX))
        self._connection = Connection(
            self.servers,
            connect_timeout=connect_timeout,
            options=connect_options,
            on_disconnected=self._connection_lost,
            on_reconnected=self._connection_restored,
        )
        self._nc: NATS | None = None
        self._key_values: KeyValues | None = None  # the Key-Value buckets of the current connection
        self._jsm: JetStreamManager | None = None
        self._registry: StreamRegistry | None = None
        self._publisher: Publisher | None = None
        self._workers: set[PullWorker] = set()
        self.clock: Clock = MonotonicClock()
        self.reconnects = 0
        """Times the connection was re-established after a loss (the ``jetstream_connection_reconnects`` metric)."""

    # -- connection --------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def max_payload(self) -> int:
        return self._nc.max_payload if self._nc is not None else _DEFAULT_MAX_PAYLOAD

    @property
    def max_control_line(self) -> int:
        return DEFAULT_MAX_CONTROL_LINE  # not in the server's INFO: see DEFAULT_MAX_CONTROL_LINE

    @property
    def server_version(self) -> tuple[int, int, int] | None:
        if self._nc is None:
            return None
        version = self._nc.connected_server_version
        return (version.major, version.minor, version.patch)

    def _require(self) -> tuple[NATS, JetStreamManager, StreamRegistry, Publisher]:
        if self._nc is None or self._jsm is None or self._registry is None or self._publisher is None:
            raise NotConnectedError("the broker is not connected: call `await broker.connect()` first")
        return self._nc, self._jsm, self._registry, self._publisher

    async def open(self) -> None:
        nc = await self._connection.open()
        try:
            jsm = nc.jsm(timeout=self._connection.connect_timeout)
            try:
                await jsm.account_info()
            except Exception as error:
                raise ConnectError(
                    f"connected, but JetStream does not answer: {self._connection.describe(error)} "
                    "(is the server started with -js?)"
                ) from None
            policy = self._streams
            registry = StreamRegistry(
                jsm, declared=policy.declared, auto_provision=policy.auto_provision, on_mismatch=policy.on_mismatch
            )
            await registry.declare_all()
            publisher = Publisher(nc, registry)
            await publisher.start()
        except BaseException:
            await self._connection.abandon(nc)
            raise
        self._nc, self._jsm, self._registry, self._publisher = nc, jsm, registry, publisher

    async def close(self, timeout: float) -> None:
        nc = self._nc
        if nc is None:
            return
        self._nc = self._jsm = self._registry = self._publisher = None
        await self._connection.close(nc, timeout)

    async def ping(self, timeout: float) -> bool:
        nc = self._nc
        if nc is None or not nc.is_connected:
            return False
        try:
            reply = await nc.request(_ACCOUNT_INFO, b"", timeout=timeout)
            response = json.loads(reply.data)
        except (nats.errors.Error, TimeoutError, ValueError):  # no answer, no responders, closed, not JSON
            return False
        return isinstance(response, dict) and "error" not in response

    def forget(self, worker: PullWorker) -> None:
        """``worker`` has stopped: no more connection events for it."""
        self._workers.discard(worker)

    def _connection_lost(self) -> None:
        for worker in self._workers:
            worker.connection_lost()

    def _connection_restored(self) -> None:
        self.reconnects += 1
        for worker in self._workers:
            worker.connection_restored()

    # -- streams and publishing --------------------------------------------------------------------

    async def stream_for(self, subject: str) -> str:
        return await self._require()[2].stream_for(subject)

    async def has_stream(self, name: str) -> bool:
        _, jsm, _, _ = self._require()
        try:
            await jsm.stream_info(name)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def ensure_dead_letter_stream(self) -> None:
        # An existing DEAD_LETTERS (made by an older version, or tuned by an operator) is kept unless the
        # policy says "update": a warning says what differs.
        mismatch: StreamMismatch = "update" if self._streams.on_mismatch == "update" else "warn"
        await self._require()[2].ensure(dead_letter_config(self._streams), on_mismatch=mismatch)

    async def ensure_partitioned_stream(self, wanted: PartitionedStream) -> PartitionedStream:
        _, jsm, registry, _ = self._require()
        return await ensure_partitioned_stream(jsm, registry, wanted)

    async def store(self, message: Outgoing, timeout: float) -> PubAck:
        publisher = self._publisher
        if publisher is None:
            raise NotConnectedError("the broker is not connected: call `await broker.connect()` first")
        return await publisher.send(await self._wire(message), timeout)

    async def store_many(self, messages: Sequence[Outgoing], window: int, timeout: float) -> list[PubAck | Exception]:
        publisher = self._require()[3]
        if any(message.conditions is not None for message in messages):
            messages = [await self._wire(message) for message in messages]
        return await publisher.send_many(messages, window, timeout)

    async def store_batch(
        self, stream: str, batch_id: str, messages: Sequence[Outgoing], timeout: float
    ) -> list[PubAck]:
        nc, _, registry, _ = self._require()
        return await send_batch(nc, registry, stream, batch_id, messages, self.max_payload, timeout)

    async def _wire(self, message: Outgoing) -> Outgoing:
        """``message`` with its conditions as headers (a delayed one as its schedule)."""
        conditions = message.conditions
        if conditions is not None and conditions.deliver_at is not None:
            return await scheduled(message, self._require()[2], self.max_payload)
        return with_wire_headers(message, self.max_payload)

    # -- consuming ---------------------------------------------------------------------------------

    async def consume(self, spec: ConsumerSpec, process: Process) -> JetStreamConsumer:
        nc, jsm, _, _ = self._require()
        config = consumer_config(
            spec.name, spec.subject, spec.settings, durable=spec.durable, max_deliver=spec.store_max_deliver
        )

        async def ensure() -> None:
            await ensure_consumer(nc, spec.stream, config, exclusive=spec.exclusive)

        await ensure()
        worker = PullWorker(
            nc,
            stream=spec.stream,
            consumer=spec.name,
            process=process,
            settings=spec.settings,
            ensure_consumer=ensure,
            group=GROUP if spec.exclusive else None,
        )
        self._workers.add(worker)
        try:
            await worker.start()
        except BaseException:
            self._workers.discard(worker)
            raise
        return JetStreamConsumer(self, spec, worker, nc, jsm)

    async def pause(self, stream: str, name: str, until: _dt.datetime | None) -> None:
        jsm = self._require()[1]
        try:
            if until is None:
                await jsm.resume_consumer(stream, name)
            else:
                await jsm.pause_consumer(stream, name, until.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        except nats.js.errors.NotFoundError:
            raise ConsumerConfigError(f"no consumer {name!r} on stream {stream!r} to pause or resume") from None

    async def consumer_state(self, stream: str, name: str) -> ConsumerState | None:
        _, jsm, _, _ = self._require()
        try:
            info = await jsm.consumer_info(stream, name)
        except nats.js.errors.NotFoundError:
            return None
        return self.state_of(stream, info)

    @staticmethod
    def state_of(stream: str, info: ConsumerInfo) -> ConsumerState:
        """The :class:`ConsumerState` in a consumer info of ``stream``."""
        delivered, floor = info.delivered, info.ack_floor
        return ConsumerState(
            stream=stream,
            name=info.name,
            pending=info.num_pending or 0,
            ack_pending=info.num_ack_pending or 0,
            redelivered=info.num_redelivered or 0,
            delivered_stream_seq=(delivered.stream_seq or 0) if delivered else 0,
            ack_floor_stream_seq=(floor.stream_seq or 0) if floor else 0,
            last_active=_parse_time(delivered.last_active) if delivered else None,
            paused=bool(info.paused),
            paused_until=_parse_time(info.config.pause_until) if info.paused and info.config else None,
        )

    def manager(self) -> JetStreamManager:
        """The connection's JetStream manager (for :mod:`.inspection`)."""
        return self._require()[1]

    # -- request/reply -----------------------------------------------------------------------------

    async def open_inbox(self, on_reply: OnReply) -> str:
        return await open_inbox(self._require()[0], on_reply)

    async def reply(self, address: str, message: Outgoing) -> None:
        await send_reply(self._require()[0], address, message)

    async def captures(self, subject: str) -> bool:
        return await self._require()[2].find(subject, cache=False) is not None

    # -- stored messages ---------------------------------------------------------------------------

    async def read(self, stream: str, seq: int, *, subject: str | None = None, next: bool = False) -> Stored | None:
        _, jsm, _, _ = self._require()
        try:
            return stored(stream, await jsm.get_msg(stream, seq=seq, subject=subject, next=next))
        except nats.js.errors.NotFoundError:  # no such message (past the last one), or no such stream
            return None

    async def delete(self, stream: str, seq: int) -> bool:
        _, jsm, _, _ = self._require()
        try:
            return await jsm.delete_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            return False

    async def read_last(self, stream: str, subject: str) -> Stored | None:
        return await last_on_subject(self._require()[1], stream, subject)

    # -- Key-Value ---------------------------------------------------------------------------------

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        return await self._buckets().get(bucket, key)

    async def kv_create(self, bucket: str, key: str, value: bytes, ttl: float) -> bool:
        return await self._buckets().create(bucket, key, value, ttl)

    def _buckets(self) -> KeyValues:
        nc = self._require()[0]
        if self._key_values is None or self._key_values.nc is not nc:
            self._key_values = KeyValues(nc, self._connection.connect_timeout)
        return self._key_values

    async def stream_facts(self, stream: str) -> StreamFacts:
        return await stream_facts(self._require()[2], stream)

    # -- errors ------------------------------------------------------------------------------------

    def translate(self, error: Exception) -> JetStreamError | None:
        describe = self._connection.describe
        if isinstance(error, nats.errors.ConnectionClosedError | nats.errors.ConnectionDrainingError):
            return NotConnectedError(f"the NATS connection is closed: {describe(error)}")
        if isinstance(error, nats.errors.OutboundBufferLimitError):
            return NotConnectedError("reconnecting to NATS, and nats-py's reconnect buffer is full: nothing was sent")
        if isinstance(error, nats.errors.TimeoutError):
            return RequestTimeoutError(f"the NATS server did not answer in time: {describe(error)}")
        if isinstance(error, nats.js.errors.APIError):
            return JetStreamError(f"the server refused the request: {describe(error)}")
        if isinstance(error, nats.errors.Error):
            return JetStreamError(f"NATS failed: {describe(error)}")
        return None

    def describe(self, error: BaseException) -> str:
        return self._connection.describe(error)


def _parse_time(value: object) -> _dt.datetime | None:
    """nats-py leaves ``last_active`` as the server's RFC 3339 text (nanoseconds, ``Z``)."""
    if isinstance(value, _dt.datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    head, _, fraction = value.rstrip("Z").partition(".")
    try:
        parsed = _dt.datetime.fromisoformat(head).replace(tzinfo=_dt.UTC)
    except ValueError:
        return None
    return parsed.replace(microsecond=int((fraction + "000000")[:6])) if fraction else parsed


class JetStreamConsumer:
    """A pull worker and its consumer on the server."""

    def __init__(
        self, backend: JetStreamBackend, spec: ConsumerSpec, worker: PullWorker, nc: NATS, jsm: JetStreamManager
    ) -> None:
        self._backend = backend
        self._spec = spec
        self.worker = worker
        self._nc = nc
        self._jsm = jsm

    @property
    def state(self) -> str:
        return self.worker.state.value

    @property
    def in_flight(self) -> int:
        return self.worker.in_flight

    @property
    def active(self) -> bool | None:
        return self.worker.active

    @property
    def last_error(self) -> str | None:
        return self.worker.last_error

    @property
    def counters(self) -> Counter[str]:
        return self.worker.counters

    async def idle(self) -> bool:
        if self.worker.in_flight:
            return False
        await self._nc.flush()  # the server has processed every ack sent so far
        sourced = self._spec.sourced
        if sourced is not None and not await caught_up(self._nc, self._jsm, sourced):
            return False
        return await consumer_idle(self._jsm, self._spec.stream, self._spec.name, self._spec.subject)

    async def stop(self, timeout: float) -> None:
        await self.worker.stop(timeout)
        self._backend.forget(self.worker)
        if not self._spec.durable and not self._nc.is_closed:
            try:
                await self._jsm.delete_consumer(self._spec.stream, self._spec.name)
            except (nats.errors.Error, TimeoutError) as error:
                # The server deletes it anyway after inactive_threshold without a pull.
                self.worker.counters["ephemeral_delete_failed"] += 1
                logger.info("ephemeral consumer %s not deleted now: %r", self._spec.name, error)
