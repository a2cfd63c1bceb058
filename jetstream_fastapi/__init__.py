"""NATS JetStream for FastAPI: synchronous publish, pull consumers, at-least-once delivery.

The public surface; see the README for a tour and :mod:`jetstream_fastapi.driver` for the contract.
The nats-py implementation is imported lazily, on first use of ``JetStreamBroker``, so that importing
``jetstream_fastapi.driver`` (which imports this package first) never imports ``nats``.
"""

from typing import TYPE_CHECKING, Any

from .deadletters import DeadLetter, DeadLetterAdmin
from .driver import (
    Backoff,
    Broker,
    ConsumerOptions,
    Delivery,
    Handler,
    Message,
    PubAck,
    Reject,
    Retry,
    Subscriber,
)
from .errors import (
    ConnectError,
    ConsumerConfigError,
    InvalidArgumentError,
    InvalidHandlerError,
    InvalidQueueError,
    InvalidSubjectError,
    JetStreamError,
    NoStreamError,
    NotConnectedError,
    PayloadTooLargeError,
    PublishError,
    PublishTimeoutError,
    StreamConfigError,
)
from .lifespan import get_broker, jetstream_lifespan
from .memory import InMemoryBroker, InMemorySubscription
from .routing import ConsumerRouter

if TYPE_CHECKING:
    from .jetstream import JetStreamBroker, JetStreamSubscription

_LAZY = {"JetStreamBroker", "JetStreamSubscription"}

__all__ = [
    "Backoff",
    "Broker",
    "ConnectError",
    "ConsumerConfigError",
    "ConsumerOptions",
    "ConsumerRouter",
    "DeadLetter",
    "DeadLetterAdmin",
    "Delivery",
    "Handler",
    "InMemoryBroker",
    "InMemorySubscription",
    "InvalidArgumentError",
    "InvalidHandlerError",
    "InvalidQueueError",
    "InvalidSubjectError",
    "JetStreamBroker",
    "JetStreamError",
    "JetStreamSubscription",
    "Message",
    "NoStreamError",
    "NotConnectedError",
    "PayloadTooLargeError",
    "PubAck",
    "PublishError",
    "PublishTimeoutError",
    "Reject",
    "Retry",
    "StreamConfigError",
    "Subscriber",
    "get_broker",
    "jetstream_lifespan",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import jetstream

        value = getattr(jetstream, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jetstream_fastapi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
