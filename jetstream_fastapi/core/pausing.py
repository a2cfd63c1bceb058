"""Pausing a durable consumer until a time (``broker.pause``/``broker.resume``), on the server.

A pause is kept by the server (ADR-48 consumer pause, nats-server 2.11): every instance sharing the
queue stops receiving its messages until then, and messages stored meanwhile wait in the stream. It
ends by itself at ``until``, or at :meth:`~jetstream_fastapi.core.broker.BaseBroker.resume`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable

from ..errors import InvalidArgumentError
from .publish_options import check_stream_name
from .subjects import check_queue
from .subscription import Subscription


def pause_until(until: object) -> _dt.datetime:
    """``until`` checked: an aware ``datetime`` in the future, as UTC."""
    if not isinstance(until, _dt.datetime):
        raise InvalidArgumentError(f"until must be a datetime, got {until!r}")
    if until.tzinfo is None or until.tzinfo.utcoffset(until) is None:
        raise InvalidArgumentError(f"until must be timezone-aware (a naive datetime is ambiguous), got {until!r}")
    now = _dt.datetime.now(_dt.UTC)
    if until <= now:
        raise InvalidArgumentError(f"until must be in the future, got {until.isoformat()} (now {now.isoformat()})")
    return until.astimezone(_dt.UTC)


def consumer_of(queue: str, stream: str | None, subscriptions: Iterable[Subscription]) -> tuple[str, str]:
    """``(stream, consumer)`` of durable ``queue``: in ``stream`` if given, else the stream of this
    broker's subscription with that queue."""
    check_queue(queue)
    if stream is not None:
        check_stream_name(stream, "stream")
        return stream, queue
    for sub in subscriptions:
        if sub.queue == queue:
            return sub.stream, queue
    raise InvalidArgumentError(
        f"no subscription of this broker uses queue {queue!r}: pass stream= to pause a consumer it does not run"
    )
