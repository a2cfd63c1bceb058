"""Streams on the server: declared ones created or reconciled at connect, others found once and cached.

A subject already captured by a stream (made by operations or another app) just works. An undeclared
subject that no stream captures is auto-provisioned like the Go driver does (stream named after the first
token, capturing ``<token>`` and ``<token>.>``) but with *Limits* retention, so several queues can consume
one subject, and file storage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from collections.abc import Iterable
from typing import Literal

from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError
from nats.js.manager import JetStreamManager

from ...core.subjects import stream_to_provision
from ...errors import NoStreamError, StreamConfigError

logger = logging.getLogger("jetstream_fastapi")

SUBJECTS_KEPT = 4096
"""Subjects whose stream a :class:`StreamRegistry` remembers (about 0.5 MB); an older one is asked again."""

StreamMismatch = Literal["error", "warn", "update"]
_DEFAULTS = StreamConfig()
# Fields the server fills in or normalises: comparing them would report differences nobody declared.
_IGNORED = frozenset({"name", "metadata", "consumer_limits"})


def stream_differences(declared: StreamConfig, actual: StreamConfig) -> dict[str, tuple[object, object]]:
    """Fields set in ``declared`` (differing from nats-py's defaults) whose value differs on the server."""
    differences: dict[str, tuple[object, object]] = {}
    for field in dataclasses.fields(StreamConfig):
        name = field.name
        want = getattr(declared, name)
        if name in _IGNORED or want is None or want == getattr(_DEFAULTS, name):
            continue
        have = getattr(actual, name)
        if not _same(want, have):
            differences[name] = (_plain(want), _plain(have))
    return differences


def _same(want: object, have: object) -> bool:
    if isinstance(want, list) and isinstance(have, list):
        return sorted(map(str, want)) == sorted(map(str, have))
    if isinstance(want, float | int) and isinstance(have, float | int):
        return abs(want - have) < 1e-6
    return _plain(want) == _plain(have)


def _plain(value: object) -> object:
    return value.value if isinstance(value, enum.Enum) else value


class StreamRegistry:
    """Finds, creates and caches the stream of each subject; one per broker connection."""

    def __init__(
        self,
        jsm: JetStreamManager,
        *,
        declared: Iterable[StreamConfig] = (),
        auto_provision: bool = True,
        on_mismatch: StreamMismatch = "error",
    ) -> None:
        self._jsm = jsm
        self._declared = list(declared)
        self._auto_provision = auto_provision
        self._on_mismatch = on_mismatch
        self._by_subject: dict[str, str] = {}
        self._configs: dict[str, StreamConfig] = {}
        self._warned: set[str] = set()
        self._lock = asyncio.Lock()

    async def declare_all(self) -> None:
        """Create each declared stream that is missing; reconcile those that differ."""
        for config in self._declared:
            await self.ensure(config)

    async def ensure(self, config: StreamConfig, *, on_mismatch: StreamMismatch | None = None) -> None:
        """Create ``config`` if missing; if it differs on the server, act on the mismatch policy (this
        registry's, or ``on_mismatch``)."""
        assert config.name is not None
        policy = on_mismatch or self._on_mismatch
        try:
            info = await self._jsm.stream_info(config.name)
        except NotFoundError:
            await self._jsm.add_stream(config)
            logger.info("created stream %s (subjects %s)", config.name, config.subjects)
            return
        differences = stream_differences(config, info.config)
        if not differences:
            return
        if policy == "update":
            logger.warning("updating stream %s: %s", config.name, differences)
            await self._jsm.update_stream(config)
        elif policy == "warn":
            if config.name not in self._warned:  # once per connection, not at every subscribe
                self._warned.add(config.name)
                logger.warning("stream %s differs from its declaration, left as is: %s", config.name, differences)
        else:
            raise StreamConfigError(
                config.name, differences, "pass stream_mismatch='update' to update it, or 'warn' to keep it"
            )

    def cached(self, subject: str) -> str | None:
        """The stream already known to capture ``subject``, without asking the server."""
        return self._by_subject.get(subject)

    def remember(self, subject: str, stream: str) -> None:
        """Record that ``stream`` captures ``subject`` (learned from a PubAck, or asked), among the last
        :data:`SUBJECTS_KEPT` subjects: an app publishing to ``orders.<id>`` meets a new subject every time."""
        by_subject = self._by_subject
        if len(by_subject) >= SUBJECTS_KEPT and subject not in by_subject:
            del by_subject[next(iter(by_subject))]  # the oldest: dicts keep insertion order
        by_subject[subject] = stream

    async def find(self, subject: str, *, cache: bool = True) -> str | None:
        """The stream capturing ``subject`` (wildcards allowed: a stream capturing any subject it matches),
        asking the server once (every time with ``cache=False``); ``None`` if none."""
        stream = self._by_subject.get(subject) if cache else None
        if stream is not None:
            return stream
        try:
            stream = await self._jsm.find_stream_name_by_subject(subject)
        except NotFoundError:
            return None
        if cache:
            self.remember(subject, stream)
        return stream

    async def stream_for(self, subject: str) -> str:
        """The stream capturing ``subject``, auto-provisioning one when allowed; else :class:`NoStreamError`."""
        stream = await self.find(subject)
        if stream is not None:
            return stream
        async with self._lock:  # one creation at a time; the winner's stream serves the others
            stream = await self.find(subject)
            if stream is not None:
                return stream
            return await self._provision(subject)

    async def _provision(self, subject: str) -> str:
        name, subjects = stream_to_provision(subject, auto_provision=self._auto_provision)
        # TTLs, schedules and atomic batches allowed: ``ttl=``, ``delay=``, ``publish_batch`` on it just work.
        config = StreamConfig(
            name=name,
            subjects=subjects,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            allow_msg_ttl=True,
            allow_msg_schedules=True,
            allow_atomic=True,
        )
        try:
            await self._jsm.add_stream(config)
        except APIError as error:
            raise NoStreamError(
                subject, f"auto-provisioning stream {name!r} for {subjects} failed: {error.description}"
            ) from None
        logger.info("auto-provisioned stream %s (subjects %s)", name, subjects)
        self._by_subject[subject] = name
        return name

    async def config_of(self, stream: str) -> StreamConfig:
        """The configuration of ``stream`` on the server, asked once (its subjects and flags)."""
        config = self._configs.get(stream)
        if config is None:
            config = self._configs[stream] = (await self._jsm.stream_info(stream)).config
        return config

    def forget(self) -> None:
        """Drop every cached lookup (after a stream was deleted, for instance)."""
        self._by_subject.clear()
        self._configs.clear()
