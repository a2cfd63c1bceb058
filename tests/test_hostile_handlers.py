"""A handler cannot stop its consumer (issue 22, case 5), on both brokers.

A handler that awaits something another task cancelled gets ``asyncio.CancelledError`` although its own
task is not being cancelled. That is a failed attempt like any other exception: the message is nakked
with backoff and comes back, the consumer keeps going, and ``disconnect()`` returns normally.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from jetstream_fastapi import Message
from jetstream_fastapi.core.handling import Action, ConsumerSettings, run_handler
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


async def test_cancelling_the_handler_task_still_cancels_it() -> None:
    # A shutdown timeout cancels the task running the handler: that must not become a failed attempt.
    started = asyncio.Event()

    async def handler(message: Message) -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(run_handler(handler, Message(body=b"x"), ConsumerSettings()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_handler_raising_cancelled_error_is_a_failed_attempt() -> None:
    async def handler(message: Message) -> None:
        raise asyncio.CancelledError()

    verdict = await run_handler(handler, Message(body=b"x"), ConsumerSettings())
    assert verdict.action is Action.NAK
    assert isinstance(verdict.error, asyncio.CancelledError)
