"""NATS JetStream for FastAPI: synchronous publish, pull consumers, at-least-once delivery.

The public surface; see the README for a tour and :mod:`jetstream_fastapi.driver` for the contract.
The contract, the errors and the dead-letter format are plain Python; everything else (the nats-py
backend, the in-memory broker, the FastAPI integration, ``BrokerSettings``) is imported lazily, on first
use, so that importing ``jetstream_fastapi.driver`` (which imports this package first) loads nothing
outside the standard library: no ``nats``, ``fastapi``, ``starlette``, ``pydantic`` or ``anyio``.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__
from .clock import ManualClock
from .core.deadletters import DeadLetter
from .driver import (
    Ack,
    Backoff,
    Broker,
    ConsumerAdmin,
    ConsumerOptions,
    ConsumerState,
    DeadLetterAdmin,
    Delivery,
    Handler,
    JsonModel,
    Message,
    Payload,
    PubAck,
    PublishItem,
    Reject,
    Retry,
    ScheduleAdmin,
    Subscriber,
)
from .errors import (
    BatchStoredError,
    ConnectError,
    ConsumerConfigError,
    DeadLetterNotFoundError,
    DeadLetterReplayError,
    DeliveryLimitError,
    HandlerTimeoutError,
    InvalidArgumentError,
    InvalidHandlerError,
    InvalidHeaderError,
    InvalidQueueError,
    InvalidSubjectError,
    JetStreamError,
    NatsServerError,
    NoStreamError,
    NotConnectedError,
    PayloadTooLargeError,
    PublishBatchError,
    PublishConflictError,
    PublishError,
    PublishTimeoutError,
    RemoteHandlerError,
    ReplyTimeoutError,
    RequestTimeoutError,
    ServerVersionError,
    StreamConfigError,
    StreamFlagError,
    StreamNotFoundError,
    UnknownOptionError,
)

if TYPE_CHECKING:
    from .backends.jetstream.broker import JetStreamBroker
    from .backends.jetstream.inspection import Inspector
    from .backends.memory.broker import InMemoryBroker
    from .core.partitioned import PartitionedSubscription
    from .core.recurring import RecurringSchedule, ScheduleDeclared, ScheduleInfo, ScheduleReport
    from .core.subscription import Subscription
    from .integration.admin import admin_router
    from .integration.asyncapi import asyncapi_document, asyncapi_router
    from .integration.health import ConsumerHealth, Readiness, check_readiness, health_router
    from .integration.lifespan import get_broker, jetstream_lifespan
    from .integration.publishing import Publication
    from .integration.routing import ConsumerRouter
    from .observability.router import metrics_router
    from .settings import BrokerSettings

# Lazily imported names and their modules.
_LAZY = {
    "BrokerSettings": "settings",
    "ConsumerHealth": "integration.health",
    "ConsumerRouter": "integration.routing",
    "InMemoryBroker": "backends.memory.broker",
    "Inspector": "backends.jetstream.inspection",
    "JetStreamBroker": "backends.jetstream.broker",
    "PartitionedSubscription": "core.partitioned",
    "Publication": "integration.publishing",
    "Readiness": "integration.health",
    "RecurringSchedule": "core.recurring",
    "ScheduleDeclared": "core.recurring",
    "ScheduleInfo": "core.recurring",
    "ScheduleReport": "core.recurring",
    "Subscription": "core.subscription",
    "admin_router": "integration.admin",
    "asyncapi_document": "integration.asyncapi",
    "asyncapi_router": "integration.asyncapi",
    "check_readiness": "integration.health",
    "get_broker": "integration.lifespan",
    "health_router": "integration.health",
    "jetstream_lifespan": "integration.lifespan",
    "metrics_router": "observability.router",
}

__all__ = [
    "Ack",
    "Backoff",
    "BatchStoredError",
    "Broker",
    "BrokerSettings",
    "ConnectError",
    "ConsumerAdmin",
    "ConsumerConfigError",
    "ConsumerHealth",
    "ConsumerOptions",
    "ConsumerRouter",
    "ConsumerState",
    "DeadLetter",
    "DeadLetterAdmin",
    "DeadLetterNotFoundError",
    "DeadLetterReplayError",
    "Delivery",
    "DeliveryLimitError",
    "Handler",
    "HandlerTimeoutError",
    "InMemoryBroker",
    "Inspector",
    "InvalidArgumentError",
    "InvalidHandlerError",
    "InvalidHeaderError",
    "InvalidQueueError",
    "InvalidSubjectError",
    "JetStreamBroker",
    "JetStreamError",
    "JsonModel",
    "ManualClock",
    "Message",
    "NatsServerError",
    "NoStreamError",
    "NotConnectedError",
    "PartitionedSubscription",
    "Payload",
    "PayloadTooLargeError",
    "PubAck",
    "Publication",
    "PublishBatchError",
    "PublishConflictError",
    "PublishError",
    "PublishItem",
    "PublishTimeoutError",
    "Readiness",
    "RecurringSchedule",
    "Reject",
    "RemoteHandlerError",
    "ReplyTimeoutError",
    "RequestTimeoutError",
    "Retry",
    "ScheduleAdmin",
    "ScheduleDeclared",
    "ScheduleInfo",
    "ScheduleReport",
    "ServerVersionError",
    "StreamConfigError",
    "StreamFlagError",
    "StreamNotFoundError",
    "Subscriber",
    "Subscription",
    "UnknownOptionError",
    "admin_router",
    "asyncapi_document",
    "asyncapi_router",
    "check_readiness",
    "get_broker",
    "health_router",
    "jetstream_lifespan",
    "metrics_router",
]


# Old names of one class, still importable: both brokers' subscriptions are one Subscription.
_OLD_NAMES = {"InMemorySubscription": "Subscription", "JetStreamSubscription": "Subscription"}


def __getattr__(name: str) -> Any:
    if name in _OLD_NAMES:
        return __getattr__(_OLD_NAMES[name])
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jetstream_fastapi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
