"""NATS JetStream for FastAPI: synchronous publish, pull consumers, at-least-once delivery.

The public surface; see the README for a tour and :mod:`jetstream_fastapi.driver` for the contract.
"""

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
from .jetstream import JetStreamBroker, JetStreamSubscription
from .lifespan import get_broker, jetstream_lifespan
from .memory import InMemoryBroker, InMemorySubscription
from .routing import ConsumerRouter

__all__ = [
    "Backoff",
    "Broker",
    "ConnectError",
    "ConsumerConfigError",
    "ConsumerOptions",
    "ConsumerRouter",
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
