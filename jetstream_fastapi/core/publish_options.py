"""The options of one publish beyond its body and headers: a TTL, optimistic concurrency, a delay.

Checked here, once, for both backends, before anything is sent; each backend gives them their meaning
(the JetStream backend as ``Nats-TTL`` and ``Nats-Expected-*`` headers, the memory backend on its clock).
A server too old for a feature is refused with :class:`~jetstream_fastapi.errors.ServerVersionError`.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import InvalidArgumentError, ServerVersionError, UnknownOptionError
from .payloads import check_msg_id
from .schedules import due

MIN_TTL = 1.0
"""The shortest per-message TTL a server accepts, in seconds."""

MIN_SERVER_VERSION: dict[str, tuple[int, int, int]] = {
    "per-message TTL": (2, 11, 0),
    "message schedules": (2, 12, 0),
    "recurring message schedules": (2, 14, 0),
    "atomic batch publish": (2, 12, 0),
    "consumer pause": (2, 11, 0),
    "key order": (2, 11, 0),
    "exclusive consumers": (2, 11, 0),  # priority groups, pinned client (ADR-42)
}
"""The first nats-server release with each feature: the one gate of every feature that needs a recent
server (:func:`check_server_version`, raising :class:`~jetstream_fastapi.errors.ServerVersionError`)."""


@dataclass(frozen=True, slots=True)
class PublishConditions:
    """What one publish asks of the stream besides storing it (``None``: not asked)."""

    ttl: float | None = None
    """Seconds after which the stream removes the message (the stream must allow per-message TTLs)."""
    expected_stream: str | None = None
    """The stream that must capture the subject."""
    expected_last_sequence: int | None = None
    """The stream's last sequence must be this."""
    expected_last_subject_sequence: int | None = None
    """The sequence of the last message on this subject must be this (``0``: none yet)."""
    expected_last_msg_id: str | None = None
    """The msg id of the stream's last message must be this."""
    deliver_at: _dt.datetime | None = None
    """When a delayed message is due (UTC), delivered by the server's message schedules."""
    delay: float | None = None
    """The same as seconds from the publish (what the memory backend's clock counts)."""

    @property
    def features(self) -> list[str]:
        """The features of :data:`MIN_SERVER_VERSION` these conditions use."""
        features = ["per-message TTL"] if self.ttl is not None else []
        return [*features, "message schedules"] if self.deliver_at is not None else features


def publish_conditions(
    *,
    ttl: float | None = None,
    expected_stream: str | None = None,
    expected_last_sequence: int | None = None,
    expected_last_subject_sequence: int | None = None,
    expected_last_msg_id: str | None = None,
    delay: float | _dt.timedelta | None = None,
    at: _dt.datetime | None = None,
) -> PublishConditions | None:
    """Check the options of a publish; ``None`` when none is given (the usual, cheapest case)."""
    when = due(delay, at, _dt.datetime.now(_dt.UTC))
    if when is not None:
        others = (ttl, expected_stream, expected_last_sequence, expected_last_subject_sequence, expected_last_msg_id)
        if any(value is not None for value in others):
            raise InvalidArgumentError("delay/at cannot be combined with ttl or expected_* on one publish")
        return PublishConditions(deliver_at=when[0], delay=when[1])
    if (
        ttl is None
        and expected_stream is None
        and expected_last_sequence is None
        and expected_last_subject_sequence is None
        and expected_last_msg_id is None
    ):
        return None
    if ttl is not None:
        if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not math.isfinite(ttl):
            raise InvalidArgumentError(f"ttl must be a number of seconds, got {ttl!r}")
        if ttl < MIN_TTL:
            raise InvalidArgumentError(f"ttl must be at least {MIN_TTL:g} second (the server's minimum), got {ttl!r}")
        ttl = float(ttl)
    if expected_stream is not None:
        check_stream_name(expected_stream, "expected_stream")
    for name, value in (
        ("expected_last_sequence", expected_last_sequence),
        ("expected_last_subject_sequence", expected_last_subject_sequence),
    ):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InvalidArgumentError(f"{name} must be a non-negative integer, got {value!r}")
    if expected_last_msg_id is not None:
        check_msg_id(expected_last_msg_id)
    return PublishConditions(
        ttl, expected_stream, expected_last_sequence, expected_last_subject_sequence, expected_last_msg_id
    )


_ITEM_OPTIONS = ("delay", "at")


def item_conditions(options: object) -> PublishConditions | None:
    """The options of one ``publish_many`` item: a mapping with ``delay`` or ``at``."""
    if not isinstance(options, Mapping):
        raise InvalidArgumentError(f"a publish_many item's third element must be a dict of options, got {options!r}")
    for name in options:
        if name not in _ITEM_OPTIONS:
            raise UnknownOptionError("publish_many()", str(name), _ITEM_OPTIONS)
    return publish_conditions(delay=options.get("delay"), at=options.get("at"))


def check_stream_name(name: object, what: str) -> None:
    """A stream name: a non-empty string without whitespace, ``.``, ``*``, ``>``, ``/`` or ``\\``."""
    if not isinstance(name, str) or not name or any(c.isspace() or c in ".*>/\\" for c in name):
        raise InvalidArgumentError(
            f"{what} must be a stream name (no spaces, '.', '*', '>', '/', '\\\\'), got {name!r}"
        )


def check_server_version(features: list[str], version: tuple[int, int, int] | None) -> None:
    """Raise :class:`ServerVersionError` for the first of ``features`` the server (``version``; ``None``:
    unknown, or every feature) does not have."""
    if version is None:
        return
    for feature in features:
        minimum = MIN_SERVER_VERSION[feature]
        if version < minimum:
            raise ServerVersionError(feature, minimum, version)
