"""Stored messages read back from a stream through the JetStream API, and what the front needs to know of a
stream to keep recurring schedules in it (``$JS.API.STREAM.MSG.GET``, ``STREAM.INFO``)."""

from __future__ import annotations

import base64

import nats.js.errors
from nats.js.api import RawStreamMsg
from nats.js.manager import JetStreamManager

from ...core.payloads import parse_headers
from ...errors import StreamNotFoundError
from ..base import Stored, StreamFacts
from .streams import StreamRegistry


def stored(stream: str, raw: RawStreamMsg) -> Stored:
    """A message of ``stream`` as the JetStream API answered it."""
    assert raw.seq is not None
    # nats-py's get_msg parses headers with the e-mail parser (non-ASCII values become email.header.Header
    # objects); its raw block, base64 in the API answer, is parsed here as UTF-8 instead.
    headers = parse_headers(base64.b64decode(raw.hdrs)) if raw.hdrs else {}
    return Stored(stream, raw.seq, raw.subject or "", raw.data or b"", headers, raw.time)


async def last_on_subject(jsm: JetStreamManager, stream: str, subject: str) -> Stored | None:
    """The last message of ``stream`` on ``subject``; ``None`` if there is none."""
    try:
        return stored(stream, await jsm.get_last_msg(stream, subject))
    except nats.js.errors.NotFoundError:
        return None


async def stream_facts(registry: StreamRegistry, stream: str) -> StreamFacts:
    """The subjects and flags of ``stream`` (its config, asked once); :class:`StreamNotFoundError` if none."""
    try:
        config = await registry.config_of(stream)
    except nats.js.errors.NotFoundError:
        raise StreamNotFoundError(stream) from None
    subjects = tuple(config.subjects or ())
    sources = config.sources or []
    transforms = (sources[0].subject_transforms or []) if len(sources) == 1 else []
    source = (sources[0].name, transforms[0].src) if len(transforms) == 1 and transforms[0].src else None
    window = float(config.duplicate_window or 0) or 120.0  # 0: the server's default, two minutes
    return StreamFacts(
        stream,
        subjects,
        bool(config.allow_msg_schedules),
        bool(config.allow_msg_ttl),
        source=source,
        duplicate_window=window,
    )
