"""What both brokers share about consuming: resolved consumer settings and the handler's verdict.

A message's fate is decided here, once, so the in-memory broker and the JetStream worker cannot drift:
the handler returns (or raises :class:`Ack`) → ack; raises :class:`Retry` → nak after its delay; raises
:class:`Reject` → terminate; raises anything else → nak after the backoff delay, or terminate when it was
the last allowed attempt.
Imports nothing from ``nats``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import inspect
import logging
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ..driver import Ack, Backoff, ConsumerOptions, Handler, Message, Reject, Retry
from ..errors import HandlerTimeoutError, InvalidArgumentError, InvalidHandlerError, UnknownOptionError
from ..observability.logs import message_extra

logger = logging.getLogger("jetstream_fastapi")

DeliverPolicy = Literal["all", "new", "last"]


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """The consumer options of one subscription, validated (defaults come from the broker)."""

    batch_size: int = 10
    fetch_wait: float = 5.0
    concurrency: int = 10
    ack_wait: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 1000
    backoff: Backoff = dataclasses.field(default_factory=Backoff)
    deliver_policy: DeliverPolicy | None = None
    inactive_threshold: float = 300.0
    dead_letter: bool = True
    handler_timeout: float | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "concurrency", "max_ack_pending"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_deliver, int) or (self.max_deliver < 1 and self.max_deliver != -1):
            raise InvalidArgumentError(f"max_deliver must be >= 1 (or -1 for unlimited), got {self.max_deliver!r}")
        if self.handler_timeout is not None and (
            not isinstance(self.handler_timeout, int | float) or self.handler_timeout <= 0
        ):
            raise InvalidArgumentError(
                f"handler_timeout must be a positive number of seconds, got {self.handler_timeout!r}"
            )
        for name in ("fetch_wait", "ack_wait", "inactive_threshold"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise InvalidArgumentError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.fetch_wait < 0.2:
            raise InvalidArgumentError(f"fetch_wait must be at least 0.2 s, got {self.fetch_wait!r}")
        if self.max_ack_pending < self.concurrency:
            raise InvalidArgumentError(
                f"max_ack_pending ({self.max_ack_pending}) must be >= concurrency ({self.concurrency})"
            )
        if not isinstance(self.backoff, Backoff):
            raise InvalidArgumentError(f"backoff must be a Backoff, got {self.backoff!r}")
        if self.deliver_policy not in (None, "all", "new", "last"):
            raise InvalidArgumentError(f"deliver_policy must be 'all', 'new' or 'last', got {self.deliver_policy!r}")

    def merged(self, options: ConsumerOptions | Mapping[str, object], where: str = "subscribe()") -> ConsumerSettings:
        """These settings with ``options`` applied; unknown option names raise :class:`UnknownOptionError`."""
        for name in options:
            if name not in _OPTION_NAMES:
                raise UnknownOptionError(where, name, _OPTION_NAMES)
        if not options:
            return self
        changes = dict(options)
        # A larger concurrency than the default window needs a matching server-side window.
        if "concurrency" in changes and "max_ack_pending" not in changes:
            changes["max_ack_pending"] = max(self.max_ack_pending, int(changes["concurrency"]))  # type: ignore[call-overload]
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def is_last_attempt(self, attempt: int) -> bool:
        """Whether ``attempt`` is the last one ``max_deliver`` allows."""
        return self.max_deliver != -1 and attempt >= self.max_deliver


_OPTION_NAMES = frozenset(ConsumerOptions.__annotations__)


class Action(enum.Enum):
    """What to tell the server about a handled message."""

    ACK = "ack"
    NAK = "nak"
    TERM = "term"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one handler run: the action, the nak delay, and why it failed."""

    action: Action
    delay: float = 0.0
    error: BaseException | None = None
    result: object = None
    """What the handler returned (an ack only): the reply to a request (see :mod:`~jetstream_fastapi.core.requests`)."""

    @property
    def reason(self) -> str:
        """A one-line description of the failure, for logs and termination reasons."""
        if self.error is None:
            return ""
        text = str(self.error)
        return f"{type(self.error).__name__}: {text}" if text else type(self.error).__name__


ACKED = Verdict(Action.ACK)


async def run_handler(handler: Handler, message: Message, settings: ConsumerSettings) -> Verdict:
    """Run ``handler`` on ``message`` and decide its fate.

    Never raises, except ``CancelledError`` when the running task itself is being cancelled (a shutdown
    timeout), and ``KeyboardInterrupt``/``SystemExit``. Anything else the handler raises is a failed attempt,
    ``CancelledError`` included: a handler that awaited something another task cancelled gets one while
    nobody cancels *this* task, and letting it out would end the task that reads the subscription.
    """
    try:
        if settings.handler_timeout is None:
            result = await handler(message)
        else:
            result = await _with_timeout(handler, message, settings.handler_timeout)
    except BaseException as error:
        verdict = verdict_for(message, settings, error)
        if verdict is None:
            raise
        return verdict
    return ACKED if result is None else Verdict(Action.ACK, result=result)


def verdict_for(message: Message, settings: ConsumerSettings, error: BaseException) -> Verdict | None:
    """The verdict on a handler that raised ``error``: :class:`Ack` → ack, :class:`Retry` → nak after its
    delay, :class:`Reject` → terminate, anything else a failed attempt (see :func:`run_handler`); ``None``
    when ``error`` is not the handler's to decide (:func:`is_handler_failure`), for the caller to re-raise.

    A plain function, so that a caller awaiting the handler itself (the processor's hot path) shares these
    rules without a second coroutine around the handler's."""
    if isinstance(error, Ack):
        logger.debug("message on %s acked without handling: %s", message.subject, error.reason)
        return ACKED
    if isinstance(error, Retry):
        return _failed(message, settings, error, error.after)
    if isinstance(error, Reject):
        _log(logging.WARNING, "rejected as poison", message, error)
        return Verdict(Action.TERM, error=error)
    if not is_handler_failure(error):
        return None
    return _failed(message, settings, error, None)


def is_handler_failure(error: BaseException) -> bool:
    """Whether ``error``, raised out of a handler, is a failed attempt rather than the process or the task
    being stopped: everything but ``KeyboardInterrupt``, ``SystemExit`` and a ``CancelledError`` while the
    running task is being cancelled (``Task.cancelling()``, Python 3.11+)."""
    if isinstance(error, KeyboardInterrupt | SystemExit):
        return False
    if isinstance(error, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is not None and task.cancelling() == 0
    return True


async def _with_timeout(handler: Handler, message: Message, timeout: float) -> object:
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await handler(message)
    except TimeoutError:
        if deadline.expired():  # ours, not a TimeoutError the handler raised itself
            raise HandlerTimeoutError(f"the handler ran longer than handler_timeout={timeout:g}s") from None
        raise


def _failed(message: Message, settings: ConsumerSettings, error: BaseException, after: float | None) -> Verdict:
    attempt = message.attempt
    if settings.is_last_attempt(attempt):
        _log(logging.ERROR, f"failed its last attempt ({attempt}/{settings.max_deliver})", message, error)
        return Verdict(Action.TERM, error=error)
    delay = after if after is not None else settings.backoff.delay(attempt, random.random())
    level = logging.INFO if isinstance(error, Retry) else logging.WARNING
    _log(level, f"failed attempt {attempt}, redelivery in {delay:.2f}s", message, error)
    return Verdict(Action.NAK, delay=delay, error=error)


def _log(level: int, what: str, message: Message, error: BaseException) -> None:
    delivery = message.delivery
    where = f"{delivery.stream}#{delivery.sequence}" if delivery else "?"
    logger.log(
        level,
        "message on %s (%s, msg_id=%s) %s: %s",
        message.subject,
        where,
        message.msg_id,
        what,
        f"{type(error).__name__}: {error}",
        exc_info=error if level >= logging.ERROR and not isinstance(error, Retry | Reject) else None,
        extra=message_extra(message),
    )


def check_one_filter(queue: str, subject: str, stream: str, running: Iterable[tuple[str, str | None, str]]) -> None:
    """Refuse a second subscription of ``queue`` on ``stream`` with another subject than a running one.

    A durable consumer has one filter subject: subscribing again with another would move the filter, and
    the first subscription would silently start receiving the second one's messages. ``running`` holds
    ``(stream, queue, subject)`` of the broker's running subscriptions.
    """
    for other_stream, other_queue, other_subject in running:
        if other_queue == queue and other_stream == stream and other_subject != subject:
            raise InvalidArgumentError(
                f"queue {queue!r} already consumes {other_subject!r} on stream {stream!r}: a durable consumer "
                f"has one filter subject, so {subject!r} needs a queue name of its own"
            )


def check_handler(handler: object) -> None:
    """Raise :class:`InvalidHandlerError` unless ``handler`` is an ``async`` callable."""
    call = getattr(handler, "__call__", None)  # noqa: B004 - async callable objects are fine too
    if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)):
        raise InvalidHandlerError(f"handler {handler!r} must be an `async def` function taking a Message")
