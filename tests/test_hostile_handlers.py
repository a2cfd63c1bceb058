"""A handler cannot stop its consumer (issue 22, case 5), on both brokers.

A handler that awaits something another task cancelled gets ``asyncio.CancelledError`` although its own
task is not being cancelled. That is a failed attempt like any other exception: the message is nakked
with backoff and comes back, the consumer keeps going, and ``disconnect()`` returns normally.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import pytest

from jetstream_fastapi import Handler, Message
from jetstream_fastapi.core.handling import Action, ConsumerSettings, Verdict, run_handler
from jetstream_fastapi.core.processing import DeadLetterOutcome, Processor
from tests.conftest import BrokerFactory

COUNT = 400
POISONED = 300  # the call that raises


async def test_a_handler_raising_cancelled_error_does_not_stop_its_consumer(
    make_broker: BrokerFactory, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = await make_broker(max_deliver=3)
    handled: set[int] = set()
    calls = 0
    done = asyncio.Event()

    async def handler(message: Message) -> None:
        nonlocal calls
        calls += 1
        if calls == POISONED:
            raise asyncio.CancelledError()  # as awaiting a future another task cancelled does
        handled.add(int(message.body))
        if len(handled) == COUNT:
            done.set()

    subscription = await broker.subscribe(f"{prefix}.jobs", handler, queue="jobs")
    await broker.publish_many((f"{prefix}.jobs", str(i).encode()) for i in range(COUNT))
    await asyncio.wait_for(done.wait(), timeout=30)
    assert handled == set(range(COUNT))  # the failed one came back and was handled on its next attempt
    assert subscription.state == "running"
    failures = [r for r in caplog.records if "CancelledError" in r.getMessage() and r.levelno >= logging.WARNING]
    assert failures, "the failed attempt is logged"
    await broker.disconnect()  # returns, raises nothing


async def test_a_handler_raising_cancelled_error_on_every_attempt_is_dead_lettered(
    make_broker: BrokerFactory, prefix: str
) -> None:
    broker = await make_broker(max_deliver=2)
    handled: list[bytes] = []

    async def handler(message: Message) -> None:
        if message.body == b"poison":
            raise asyncio.CancelledError()
        handled.append(message.body)

    subscription = await broker.subscribe(f"{prefix}.jobs", handler, queue="jobs")
    await broker.publish(f"{prefix}.jobs", b"poison")
    await broker.publish(f"{prefix}.jobs", b"after")
    await broker.wait_until_idle(timeout=30)
    assert handled == [b"after"]
    letters = [letter for letter in await broker.list_dead_letters() if letter.subject == f"{prefix}.jobs"]
    assert [(letter.body, letter.error_type) for letter in letters] == [(b"poison", "CancelledError")]
    assert subscription.state == "running"
    await broker.disconnect()


def _run(way: str, handler: Handler) -> Awaitable[Verdict]:
    """One message through ``run_handler``, or through the processor, which awaits the handler itself when
    there is no ``handler_timeout`` (and goes through ``run_handler`` when there is one)."""
    message = Message(body=b"x")
    if way == "run_handler":
        return run_handler(handler, message, ConsumerSettings())

    async def store(message: Message, verdict: Verdict) -> DeadLetterOutcome:
        return "stored"

    timeout = 60.0 if way == "processor with handler_timeout" else None
    return Processor(handler, ConsumerSettings(handler_timeout=timeout), store, lambda: None)(message)


WAYS = ["run_handler", "processor", "processor with handler_timeout"]


@pytest.mark.parametrize("way", WAYS)
async def test_cancelling_the_handler_task_still_cancels_it(way: str) -> None:
    # A shutdown timeout cancels the task running the handler: that must not become a failed attempt.
    started = asyncio.Event()

    async def handler(message: Message) -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(_run(way, handler))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("way", WAYS)
async def test_a_handler_raising_cancelled_error_is_a_failed_attempt(way: str) -> None:
    async def handler(message: Message) -> None:
        raise asyncio.CancelledError()

    verdict = await _run(way, handler)
    assert verdict.action is Action.NAK
    assert isinstance(verdict.error, asyncio.CancelledError)
