"""Consumer configs: what a subscription asks the server for, and reconciling an existing durable.

``pull_subscribe(config=...)`` in nats-py silently ignores the config of an existing durable; here the
server's config is compared with the wanted one, differences are logged, and the consumer is updated
(the server's create-or-update), or :class:`~jetstream_fastapi.errors.ConsumerConfigError` says why not.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from ...core.exclusive import GROUP, LEASE
from ...core.handling import ConsumerSettings
from ...errors import ConsumerConfigError

logger = logging.getLogger("jetstream_fastapi")

_POLICIES = {"all": DeliverPolicy.ALL, "new": DeliverPolicy.NEW, "last": DeliverPolicy.LAST}
OPTIONS_METADATA = "jetstream_fastapi.options"
"""The consumer metadata key holding this library's handler options (JSON), for the CLI's ``consumers``.
Written when the consumer is created or updated, not reconciled by itself: instances with different
options would otherwise update the consumer back and forth."""
# Fields this library sets and keeps in line on an existing consumer.
_RECONCILED = ("filter_subject", "ack_wait", "max_deliver", "max_ack_pending", "inactive_threshold")


def consumer_config(
    name: str, subject: str, settings: ConsumerSettings, *, durable: bool, max_deliver: int
) -> ConsumerConfig:
    """The config for a pull consumer named ``name`` on ``subject``: explicit ack, ``max_deliver`` deliveries
    at most on the server (see :func:`~jetstream_fastapi.core.processing.store_max_deliver`)."""
    policy = settings.deliver_policy or ("all" if durable else "new")
    return ConsumerConfig(
        name=name,
        durable_name=name if durable else None,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait,
        max_deliver=max_deliver,
        max_ack_pending=settings.max_ack_pending,
        deliver_policy=_POLICIES[policy],
        inactive_threshold=None if durable else settings.inactive_threshold,
        metadata={OPTIONS_METADATA: json.dumps(_options(settings), separators=(",", ":"))},
    )


def _options(settings: ConsumerSettings) -> dict[str, object]:
    """The handler options the server does not know of (it has ack_wait, max_deliver, ... itself)."""
    return {
        "batch_size": settings.batch_size,
        "fetch_wait": settings.fetch_wait,
        "concurrency": settings.concurrency,
        "handler_timeout": settings.handler_timeout,
        "dead_letter": settings.dead_letter,
        "max_deliver": settings.max_deliver,
        "backoff": {"initial": settings.backoff.initial, "maximum": settings.backoff.maximum},
    }


def priority_fields(exclusive: bool) -> dict[str, object]:
    """The priority-group fields of a consumer (ADR-42; nats-py's ConsumerConfig lacks them): a pinned
    client group for an exclusive one, none otherwise."""
    if not exclusive:
        return {"priority_policy": "none"}
    return {"priority_groups": [GROUP], "priority_policy": "pinned_client", "priority_timeout": int(LEASE * 1e9)}


async def ensure_consumer(nc: NATS, stream: str, config: ConsumerConfig, *, exclusive: bool = False) -> None:
    """Create the consumer, or update it when the server's config differs from ``config`` and
    :func:`priority_fields` (raw JSON requests: nats-py's API would drop the priority fields)."""
    assert config.name is not None
    have = await _request(nc, f"$JS.API.CONSUMER.INFO.{stream}.{config.name}", b"", missing_ok=True)
    extra = priority_fields(exclusive)
    if have is not None:
        raw: dict[str, Any] = have.get("config", {})
        server = ConsumerConfig.from_response(dict(raw))
        differences = {
            field: (getattr(config, field), getattr(server, field))
            for field in _RECONCILED
            if not _same(getattr(config, field), getattr(server, field))
        }
        for key, want in extra.items():
            if raw.get(key, "none" if key == "priority_policy" else None) != want:
                differences[key] = (want, raw.get(key))
        if not differences:
            return
        logger.warning("consumer %s on stream %s differs, updating: %s", config.name, stream, differences)
    body = json.dumps({"stream_name": stream, "config": {**config.as_dict(), **extra}}).encode()
    try:
        await _request(nc, f"$JS.API.CONSUMER.CREATE.{stream}.{config.name}", body)
    except APIError as error:
        action = "update" if have is not None else "create"
        raise ConsumerConfigError(
            f"could not {action} consumer {config.name!r} on stream {stream!r}: {error.description}"
        ) from None


async def _request(nc: NATS, subject: str, body: bytes, *, missing_ok: bool = False) -> dict[str, Any] | None:
    """A JetStream API request; its JSON answer, ``None`` for a consumer not found (with ``missing_ok``)."""
    reply = await nc.request(subject, body, timeout=5.0)
    answer: dict[str, Any] = json.loads(reply.data)
    error = answer.get("error")
    if error is not None:
        if missing_ok and error.get("code") == 404:  # no such consumer (or stream: the create says which)
            return None
        APIError.from_error(error)  # raises the APIError subclass for the code
    return answer


def _same(want: object, have: object) -> bool:
    if isinstance(want, float | int) and isinstance(have, float | int):
        return abs(want - have) < 1e-6
    return want == have
