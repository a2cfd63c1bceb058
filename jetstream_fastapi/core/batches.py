"""Atomic batches (``publish_batch``): the checks before a batch is sent, and what a stored one returns.

A batch (ADR-50, nats-server 2.12) is committed by the server all together or not at all: up to
:data:`MAX_BATCH` messages, all in one stream that allows it (``allow_atomic``). Each message gets the
msg id ``<batch_id>-<n>``, so a retry of a batch that was stored (same ``batch_id``) is recognised by the
server, and raised as :class:`~jetstream_fastapi.errors.BatchStoredError`, instead of being stored twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping

from ..driver import Payload, PublishItem
from ..errors import InvalidArgumentError, UnknownOptionError
from .payloads import check_msg_id
from .publish_options import PublishConditions, publish_conditions

MAX_BATCH = 1000
"""The most messages a server commits in one atomic batch."""

_ITEM_OPTIONS = ("expected_stream", "expected_last_sequence", "expected_last_subject_sequence", "expected_last_msg_id")

BatchItem = PublishItem
"""``(subject, message)``, or with the expectations that message is stored on (``expected_*``)."""


def batch_id_of(batch_id: str | None) -> str:
    """``batch_id`` checked (it becomes part of each msg id), or a fresh one."""
    if batch_id is None:
        return uuid.uuid4().hex
    if not isinstance(batch_id, str) or not batch_id.strip() or len(batch_id) > 64:
        raise InvalidArgumentError(f"batch_id must be a non-empty string of at most 64 characters, got {batch_id!r}")
    check_msg_id(batch_id)  # it becomes part of each message's msg id
    return batch_id


def batch_items(messages: Iterable[BatchItem]) -> list[tuple[str, Payload, PublishConditions | None]]:
    """The items of a batch with their conditions, checked: at least one, at most :data:`MAX_BATCH`."""
    items: list[tuple[str, Payload, PublishConditions | None]] = []
    for item in messages:
        subject, message, options = item if len(item) == 3 else (*item, None)
        conditions = None
        if options is not None:
            if not isinstance(options, Mapping):
                raise InvalidArgumentError(f"a batch item's third element must be a dict of options, got {options!r}")
            for name in options:
                if name not in _ITEM_OPTIONS:
                    raise UnknownOptionError("publish_batch()", str(name), _ITEM_OPTIONS)
            conditions = publish_conditions(**options)
        items.append((subject, message, conditions))
        if len(items) > MAX_BATCH:
            raise InvalidArgumentError(f"a batch holds at most {MAX_BATCH} messages (the server's limit)")
    if not items:
        raise InvalidArgumentError("a batch needs at least one message")
    return items


def one_stream(streams: dict[str, str]) -> str:
    """The one stream every subject of a batch is in (``streams``: subject -> stream); else an error."""
    found = sorted(set(streams.values()))
    if len(found) != 1:
        by_stream = {stream: sorted(s for s, name in streams.items() if name == stream) for stream in found}
        raise InvalidArgumentError(f"a batch commits in one stream; its subjects are in several: {by_stream}")
    return found[0]
