"""The contract module: dependency-free, validation of subjects, queues and options, backoff schedule."""

from __future__ import annotations

import subprocess
import sys

import pytest

import jetstream_fastapi
from jetstream_fastapi import (
    Backoff,
    InvalidArgumentError,
    InvalidHandlerError,
    InvalidQueueError,
    InvalidSubjectError,
    Message,
    Reject,
    Retry,
)
from jetstream_fastapi.core.handling import Action, ConsumerSettings, run_handler
from jetstream_fastapi.core.subjects import (
    check_queue,
    check_subject,
    provisioned_stream,
    subject_matches,
    subjects_overlap,
)
from jetstream_fastapi.driver import Delivery


def test_driver_imports_nothing_from_nats() -> None:
    code = (
        "import sys, jetstream_fastapi.driver, jetstream_fastapi.errors\n"
        "loaded = sorted(m for m in sys.modules if m == 'nats' or m.startswith('nats.'))\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"importing the contract pulled in nats: {result.stdout} {result.stderr}"


def test_public_all_is_complete_and_sorted() -> None:
    exported = set(jetstream_fastapi.__all__)
    public = {name for name in dir(jetstream_fastapi) if not name.startswith("_")}
    helpers = {"TYPE_CHECKING", "Any"}
    modules = {name for name in public if type(getattr(jetstream_fastapi, name)).__name__ == "module"}
    assert public - modules - helpers == exported
    assert jetstream_fastapi.__all__ == sorted(jetstream_fastapi.__all__)


@pytest.mark.parametrize("subject", ["", " ", "orders created", "orders.", ".orders", "orders..created", "a\tb"])
def test_invalid_subjects_rejected_everywhere(subject: str) -> None:
    with pytest.raises(InvalidSubjectError):
        check_subject(subject, wildcards=False)
    with pytest.raises(InvalidSubjectError):
        check_subject(subject, wildcards=True)


@pytest.mark.parametrize("subject", ["orders.*", "orders.>", ">", "*.created"])
def test_wildcards_only_for_subscribing(subject: str) -> None:
    assert check_subject(subject, wildcards=True) == subject
    with pytest.raises(InvalidSubjectError, match="wildcards"):
        check_subject(subject, wildcards=False)


@pytest.mark.parametrize("subject", ["orders.>.x", "orders.cre*", "ord>ers"])
def test_misplaced_wildcards_rejected(subject: str) -> None:
    with pytest.raises(InvalidSubjectError):
        check_subject(subject, wildcards=True)


@pytest.mark.parametrize("queue", ["", "a.b", "a*", "a>", "a b", "a/b", "a\\b", "x" * 256])
def test_invalid_queue_names(queue: str) -> None:
    with pytest.raises(InvalidQueueError) as caught:
        check_queue(queue)
    assert isinstance(caught.value, ValueError)


def test_valid_queue_names() -> None:
    assert check_queue("order-processor") == "order-processor"
    assert check_queue("order_processor_2") == "order_processor_2"


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("orders.created", "orders.created", True),
        ("orders.*", "orders.created", True),
        ("orders.*", "orders.created.eu", False),
        ("orders.>", "orders.created.eu", True),
        ("orders.>", "orders", False),
        ("*.created", "orders.created", True),
        ("orders.*.eu", "orders.created.us", False),
        (">", "anything.at.all", True),
    ],
)
def test_subject_matching(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("orders.>", "orders.*.eu", True),
        ("orders.*", "orders.created", True),
        ("orders.*", "orders.created.eu", False),
        ("orders.created", "billing.created", False),
        ("*.created", "orders.*", True),
        ("orders", "orders.>", False),
    ],
)
def test_subjects_overlap(first: str, second: str, expected: bool) -> None:
    assert subjects_overlap(first, second) is expected
    assert subjects_overlap(second, first) is expected


def test_provisioned_stream_rule() -> None:
    assert provisioned_stream("orders.created") == ("ORDERS", ["orders", "orders.>"])
    assert provisioned_stream("orders") == ("ORDERS", ["orders", "orders.>"])
    assert provisioned_stream("*.created") is None


def test_backoff_grows_and_is_capped() -> None:
    backoff = Backoff(initial=1.0, maximum=10.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_jitter_stays_in_band() -> None:
    backoff = Backoff(initial=4.0, maximum=4.0, jitter=0.25)
    assert backoff.delay(1, random=0.0) == pytest.approx(3.0)
    assert backoff.delay(1, random=0.999999) == pytest.approx(5.0, rel=1e-3)


@pytest.mark.parametrize(
    "kwargs", [{"initial": -1}, {"initial": 5, "maximum": 1}, {"multiplier": 0.5}, {"jitter": 1.0}]
)
def test_backoff_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidArgumentError):
        Backoff(**kwargs)


@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": 0},
        {"concurrency": -1},
        {"max_deliver": 0},
        {"ack_wait": 0},
        {"fetch_wait": 0.01},
        {"max_ack_pending": 2, "concurrency": 4},
        {"deliver_policy": "sometimes"},
        {"no_such_option": 1},
    ],
)
def test_consumer_settings_reject_bad_options(options: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError):
        ConsumerSettings().merged(options)


def test_concurrency_raises_the_ack_pending_window() -> None:
    settings = ConsumerSettings().merged({"concurrency": 5000})
    assert settings.max_ack_pending == 5000


def test_retry_rejects_negative_delay() -> None:
    with pytest.raises(InvalidArgumentError):
        Retry(after=-1)
    assert repr(Retry(after=2)) == "Retry(after=2, reason='')"
    assert repr(Reject("bad")) == "Reject(reason='bad')"


def _received(attempt: int) -> Message:
    return Message(b"x", subject="orders.created", delivery=Delivery("ORDERS", 7, attempt, 0, "proc"))


async def test_verdicts() -> None:
    settings = ConsumerSettings(max_deliver=3, backoff=Backoff(initial=1.0, maximum=8.0, jitter=0.0))

    async def ok(msg: Message) -> None:
        return None

    async def boom(msg: Message) -> None:
        raise RuntimeError("boom")

    async def later(msg: Message) -> None:
        raise Retry(after=42)

    async def poison(msg: Message) -> None:
        raise Reject("bad payload")

    assert (await run_handler(ok, _received(1), settings)).action is Action.ACK
    first = await run_handler(boom, _received(1), settings)
    assert (first.action, first.delay) == (Action.NAK, 1.0)
    second = await run_handler(boom, _received(2), settings)
    assert (second.action, second.delay) == (Action.NAK, 2.0)
    last = await run_handler(boom, _received(3), settings)
    assert last.action is Action.TERM
    assert last.reason == "RuntimeError: boom"
    assert (await run_handler(later, _received(1), settings)).delay == 42
    assert (await run_handler(later, _received(3), settings)).action is Action.TERM
    rejected = await run_handler(poison, _received(1), settings)
    assert (rejected.action, rejected.reason) == (Action.TERM, "Reject: bad payload")


def test_delivery_timestamp_is_utc() -> None:
    delivery = Delivery("S", 1, 1, 1_700_000_000_000_000_000)
    assert delivery.timestamp.year == 2023
    assert delivery.timestamp.utcoffset() is not None


def test_message_defaults() -> None:
    message = Message(b"body", headers={"Nats-Msg-Id": "abc"})
    assert message.msg_id == "abc"
    assert message.attempt == 1
    assert Message().headers == {}


def test_invalid_handler_error_is_a_type_and_value_error() -> None:
    assert issubclass(InvalidHandlerError, TypeError)
    assert issubclass(InvalidHandlerError, ValueError)
