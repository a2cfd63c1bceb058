"""Every exception the library raises, rooted at :class:`JetStreamError`.

::

    JetStreamError
    ├── InvalidArgumentError (ValueError)   bad input, raised before anything reaches the server
    │   ├── InvalidSubjectError             empty subject, whitespace, misplaced wildcards, too long for the wire
    │   ├── InvalidHeaderError              header name not a token, line break in a value, headers past 64 KiB
    │   ├── InvalidQueueError               queue (durable) name with ".", "*", ">", "/", "\\" or spaces
    │   ├── InvalidHandlerError (TypeError) a handler that is not an ``async def``
    │   ├── UnknownOptionError (TypeError)  a misspelt or unsupported option ("did you mean batch_size?")
    │   └── PayloadTooLargeError            body and headers larger than the server's max_payload
    ├── NotConnectedError                   used before ``connect()``, after ``disconnect()``, connection closed
    ├── ConnectError                        NATS unreachable or credentials refused at connect
    ├── NoStreamError (LookupError)         no stream captures the subject, auto-provisioning is off
    ├── StreamConfigError                   a declared stream differs from the server's and may not be updated
    ├── ConsumerConfigError                 the server refused to create or update a consumer
    ├── PublishError                        the server refused the message (or the client could not send it)
    │   ├── PublishTimeoutError (TimeoutError)  no PubAck within the publish deadline
    │   ├── PublishConflictError            an ``expected_*`` condition did not hold (carries the current sequence)
    │   └── StreamFlagError                 the stream does not allow the feature (``allow_msg_ttl``, ...)
    ├── ServerVersionError                  the server is older than a feature needs
    ├── PublishBatchError                   some messages of a ``publish_many`` failed
    ├── BatchStoredError                    a ``publish_batch`` retried with the batch id of a stored batch
    ├── RequestTimeoutError (TimeoutError)  the server did not answer a request in time
    │   └── ReplyTimeoutError               no reply to a ``request()`` within its timeout
    ├── RemoteHandlerError                  the handler of a ``request()`` failed (its type and text)
    ├── DeadLetterNotFoundError (LookupError)  no dead letter with that sequence
    ├── DeadLetterReplayError               a dead letter that may not be replayed (malformed, truncated, foreign)
    ├── StreamNotFoundError (LookupError)   no stream of that name (the CLI, the admin page)
    ├── HandlerTimeoutError (TimeoutError)  a handler ran past ``handler_timeout`` (recorded, never raised to callers)
    ├── DeliveryLimitError                  a delivery past ``max_deliver`` (recorded in its dead letter, never raised)
    └── NatsServerError                     the embedded ``nats-server`` is missing or did not start

The two exceptions a *handler* raises to steer delivery (:class:`~jetstream_fastapi.driver.Retry` and
:class:`~jetstream_fastapi.driver.Reject`) are not errors and live in :mod:`jetstream_fastapi.driver`.

This module imports nothing from ``nats``: business code may catch these without the client installed.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .driver import PubAck


class JetStreamError(Exception):
    """Root of every exception raised by jetstream-fastapi."""


class InvalidArgumentError(JetStreamError, ValueError):
    """An argument is invalid; raised before anything is sent to the server."""


class InvalidSubjectError(InvalidArgumentError):
    """A subject is empty, contains whitespace, uses wildcards where they are not allowed, or is longer than
    the server's protocol line (``max_control_line``) leaves room for."""


class InvalidHeaderError(InvalidArgumentError):
    """A header cannot travel: its name is not an HTTP token, its value is not one line of text, or the
    headers together are larger than the 64 KiB a JetStream server stores."""


class InvalidQueueError(InvalidArgumentError):
    """A queue name cannot be a JetStream durable consumer name."""


class InvalidHandlerError(InvalidArgumentError, TypeError):
    """A handler is not an ``async`` function, or a handler option is unknown or out of range."""


class UnknownOptionError(InvalidArgumentError, TypeError):
    """An option name the broker (or ``subscribe``, or ``nats.connect``) does not know; says the nearest one."""

    def __init__(self, where: str, name: str, known: Iterable[str]) -> None:
        nearest = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f" (did you mean {nearest[0]}?)" if nearest else ""
        super().__init__(f"{where} got an unexpected keyword argument {name!r}{hint}")
        self.name = name
        self.nearest = nearest[0] if nearest else None


class PayloadTooLargeError(InvalidArgumentError):
    """A message body is larger than the connected server accepts (its ``max_payload``)."""

    def __init__(self, subject: str, size: int, limit: int) -> None:
        super().__init__(
            f"message for {subject!r} is {size} bytes with its headers; the server accepts at most {limit}"
        )
        self.subject = subject
        self.size = size
        self.limit = limit


class NotConnectedError(JetStreamError):
    """The broker is not connected: call ``connect()`` (or use the lifespan) first."""


class ConnectError(JetStreamError):
    """The broker could not connect: server unreachable within the connect timeout, or auth refused."""


class NoStreamError(JetStreamError, LookupError):
    """No JetStream stream captures the subject and auto-provisioning does not cover it."""

    def __init__(self, subject: str, hint: str = "") -> None:
        message = f"no stream captures subject {subject!r}"
        super().__init__(f"{message}: {hint}" if hint else message)
        self.subject = subject


class StreamConfigError(JetStreamError):
    """A declared stream exists on the server with a different configuration.

    ``differences`` maps each field to ``(declared, on_server)``.
    """

    def __init__(self, stream: str, differences: Mapping[str, tuple[object, object]], hint: str = "") -> None:
        fields = ", ".join(
            f"{name}: declared {want!r}, server has {have!r}" for name, (want, have) in differences.items()
        )
        message = f"stream {stream!r} differs from its declaration ({fields})"
        super().__init__(f"{message}; {hint}" if hint else message)
        self.stream = stream
        self.differences = dict(differences)


class ConsumerConfigError(JetStreamError):
    """The server refused to create or update a consumer (for example a field it cannot change)."""


class PublishError(JetStreamError):
    """The server answered a publish with an error."""

    def __init__(self, subject: str, description: str, code: int | None = None) -> None:
        super().__init__(f"publish to {subject!r} failed: {description}")
        self.subject = subject
        self.description = description
        self.code = code


class PublishTimeoutError(PublishError, TimeoutError):
    """No PubAck arrived within the publish deadline.

    The message may still have been stored (nats-py sends buffered data after a reconnect): publish again
    with the same ``msg_id`` and the server's duplicate window makes the retry safe.
    """

    def __init__(self, subject: str, timeout: float, msg_id: str) -> None:
        super().__init__(subject, f"no PubAck within {timeout:g}s (msg_id {msg_id!r})")
        self.timeout = timeout
        self.msg_id = msg_id


class PublishConflictError(PublishError):
    """An ``expected_*`` condition of a publish did not hold: another writer came first. Never retried.

    ``current_sequence`` is the sequence the server reported (the stream's last one for
    ``expected_last_sequence``, the subject's last one for ``expected_last_subject_sequence``; ``None``
    when the server says none, as for ``expected_last_msg_id`` and ``expected_stream``); ``stream`` the
    stream that refused it.
    """

    def __init__(
        self,
        subject: str,
        description: str,
        code: int | None = None,
        *,
        current_sequence: int | None = None,
        stream: str | None = None,
    ) -> None:
        super().__init__(subject, description, code)
        self.current_sequence = current_sequence
        self.stream = stream


class StreamFlagError(PublishError):
    """The stream capturing the subject does not allow a feature the publish uses; ``flag`` is the stream
    setting that would (``allow_msg_ttl`` for a ``ttl``)."""

    def __init__(self, subject: str, stream: str, feature: str, flag: str, code: int | None = None) -> None:
        super().__init__(subject, f"stream {stream!r} does not allow {feature}: create it with {flag}=True", code)
        self.stream = stream
        self.feature = feature
        self.flag = flag


class ServerVersionError(JetStreamError):
    """The connected nats-server is older than a feature needs; says the feature and the first version."""

    def __init__(self, feature: str, minimum: tuple[int, int, int], version: tuple[int, int, int]) -> None:
        need, have = ".".join(map(str, minimum)), ".".join(map(str, version))
        super().__init__(f"{feature} needs nats-server {need} or later; the server is {have}")
        self.feature = feature
        self.minimum = need
        self.version = have


class DeadLetterNotFoundError(JetStreamError, LookupError):
    """No dead letter has this sequence (never stored, replayed or purged already)."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"no dead letter with sequence {seq}")
        self.seq = seq


class DeadLetterReplayError(JetStreamError):
    """A dead letter that replay refuses (nothing is published, the letter is kept): malformed, truncated,
    or asking for a subject its original stream does not capture (``$...``, an inbox, another stream's), or
    for a consumer that no longer exists."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"dead letter {seq} cannot be replayed: {reason}")
        self.seq = seq
        self.reason = reason


class StreamNotFoundError(JetStreamError, LookupError):
    """No stream has this name on the server (asked for by name: the CLI's ``consumers STREAM``)."""

    def __init__(self, stream: str) -> None:
        super().__init__(f"no stream named {stream!r} on the server")
        self.stream = stream


class HandlerTimeoutError(JetStreamError, TimeoutError):
    """A handler ran past its ``handler_timeout``: it was cancelled, and the message is retried.

    Raised inside the consumer, never to a caller: it is what a dead letter's ``error_type`` names."""


class RequestTimeoutError(JetStreamError, TimeoutError):
    """The server did not answer a request (other than a publish) in time: reconnecting, or overloaded."""


class ReplyTimeoutError(RequestTimeoutError):
    """No reply to a ``request()`` within its timeout (publishing it and waiting for the reply).

    ``ack`` is the request's PubAck, or ``None`` when it was not acknowledged in time (it may still have
    been stored). A stored request is still handled once its consumer runs: its reply then goes nowhere.
    """

    def __init__(self, subject: str, timeout: float, msg_id: str, ack: PubAck | None) -> None:
        stored = f"stored as {ack.stream}#{ack.seq}" if ack is not None else "not acknowledged by the server"
        super().__init__(f"no reply to the request on {subject!r} within {timeout:g}s ({stored}, msg_id {msg_id!r})")
        self.subject = subject
        self.timeout = timeout
        self.msg_id = msg_id
        self.ack = ack


class RemoteHandlerError(JetStreamError):
    """The handler of a ``request()`` failed for good: rejected, failed its last attempt, or returned a value
    that cannot be a reply. ``error_type`` and ``error`` are the handler's exception type name and text;
    ``stream``, ``sequence`` and ``attempts`` say which stored request it was and how often it ran."""

    def __init__(
        self, subject: str, error_type: str, error: str, *, stream: str = "", sequence: int = 0, attempts: int = 0
    ) -> None:
        text = f"{error_type}: {error}" if error else error_type
        super().__init__(f"the handler of the request on {subject!r} failed: {text}")
        self.subject = subject
        self.error_type = error_type
        self.error = error
        self.stream = stream
        self.sequence = sequence
        self.attempts = attempts


class DeliveryLimitError(JetStreamError):
    """A message was delivered past ``max_deliver``: its last failure could not be dead-lettered in time, or
    its handler never returned. It is dead-lettered without running the handler again (recorded as the dead
    letter's ``error_type``, never raised to callers)."""

    def __init__(self, attempt: int, limit: int) -> None:
        super().__init__(f"delivered {attempt} times, max_deliver is {limit}")
        self.attempt = attempt
        self.limit = limit


class PublishBatchError(JetStreamError):
    """Some messages of a ``publish_many`` batch failed; the others were stored.

    ``acks[i]`` is the PubAck of message ``i`` or ``None``; ``errors`` maps each failed index to its
    exception (a :class:`PublishError`, :class:`PublishTimeoutError`, ...). Publishing the failed ones
    again with the same ``msg_id`` is safe.
    """

    def __init__(self, acks: list[PubAck | None], errors: Mapping[int, BaseException]) -> None:
        first = min(errors)
        super().__init__(f"{len(errors)} of {len(acks)} publishes failed; message {first}: {errors[first]}")
        self.acks = acks
        self.errors = dict(errors)


class BatchStoredError(JetStreamError):
    """A ``publish_batch`` with the ``batch_id`` of a batch the server already stored (a retry after a
    lost answer): nothing was stored twice."""

    def __init__(self, batch_id: str, stream: str) -> None:
        super().__init__(f"batch {batch_id!r} was stored in stream {stream!r} already; nothing stored twice")
        self.batch_id = batch_id
        self.stream = stream


class NatsServerError(JetStreamError):
    """The embedded ``nats-server`` binary is missing, or the server did not start (see its log)."""
