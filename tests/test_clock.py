"""The clocks, and the in-memory broker's timers on a ManualClock: nothing here sleeps."""

from __future__ import annotations

import asyncio

import pytest

from jetstream_fastapi import Backoff, InMemoryBroker, InvalidArgumentError, Message, Retry
from jetstream_fastapi.clock import ManualClock, MonotonicClock


async def test_manual_timers_fire_in_order_at_their_instant() -> None:
    clock = ManualClock(start=100.0)
    fired: list[tuple[str, float]] = []
    clock.call_later(2.0, lambda: fired.append(("b", clock.now())))
    clock.call_later(1.0, lambda: fired.append(("a", clock.now())))
    clock.call_later(2.0, lambda: fired.append(("c", clock.now())))
    cancelled = clock.call_later(1.5, lambda: fired.append(("x", clock.now())))
    cancelled.cancel()
    assert clock.pending == 3 and clock.next_due() == 1.0
    await clock.advance(0.5)
    assert fired == [] and clock.now() == 100.5
    await clock.advance(1.5)
    assert fired == [("a", 101.0), ("b", 102.0), ("c", 102.0)]
    assert clock.now() == 102.0 and clock.pending == 0 and clock.next_due() is None


async def test_a_timer_set_by_a_timer_fires_within_the_same_advance() -> None:
    clock = ManualClock()
    fired: list[float] = []

    def tick() -> None:
        fired.append(clock.now())
        if len(fired) < 3:
            clock.call_later(1.0, tick)

    clock.call_later(1.0, tick)
    await clock.advance(10)
    assert fired == [1.0, 2.0, 3.0]


async def test_advance_lets_the_woken_tasks_run() -> None:
    clock = ManualClock()
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def woken() -> None:
        await future
        steps.append("woken")
        await asyncio.sleep(0)
        steps.append("done")

    task = asyncio.ensure_future(woken())
    clock.call_later(1.0, lambda: future.set_result(None))
    await clock.advance(1.0)
    assert steps == ["woken", "done"] and task.done()


async def test_advance_refuses_going_back() -> None:
    with pytest.raises(InvalidArgumentError, match="seconds"):
        await ManualClock().advance(-1)


async def test_monotonic_clock_fires_on_the_event_loop() -> None:
    clock = MonotonicClock()
    fired = asyncio.Event()
    before = clock.now()
    clock.call_later(0.01, fired.set)
    await asyncio.wait_for(fired.wait(), 5.0)
    assert clock.now() > before


async def test_nak_delay_elapses_on_the_manual_clock_only() -> None:
    clock = ManualClock()
    attempts: list[int] = []

    async def handler(msg: Message) -> None:
        attempts.append(msg.attempt)
        if msg.attempt == 1:
            raise Retry(after=10.0)

    async with InMemoryBroker(clock=clock) as broker:
        await broker.subscribe("clock.retry", handler, queue="q")
        await broker.publish("clock.retry", b"x")
        await clock.advance(0)
        assert attempts == [1]
        await clock.advance(9.9)
        assert attempts == [1] and not broker.idle()
        await clock.advance(0.1)
        assert attempts == [1, 2]
        await broker.wait_until_idle(timeout=1.0)


async def test_backoff_redeliveries_follow_the_schedule() -> None:
    clock = ManualClock()
    attempts: list[tuple[int, float]] = []

    async def handler(msg: Message) -> None:
        attempts.append((msg.attempt, clock.now()))
        raise RuntimeError("fails")

    backoff = Backoff(initial=1.0, multiplier=2.0, maximum=60.0, jitter=0.0)
    async with InMemoryBroker(clock=clock, backoff=backoff, max_deliver=4) as broker:
        await broker.subscribe("clock.backoff", handler, queue="q")
        await broker.publish("clock.backoff", b"x")
        await clock.advance(100)
        assert attempts == [(1, 0.0), (2, 1.0), (3, 3.0), (4, 7.0)]
        [letter] = await broker.list_dead_letters()
        assert letter.attempts == 4


async def test_duplicate_window_expires_on_the_clock() -> None:
    clock = ManualClock()
    async with InMemoryBroker(clock=clock, duplicate_window=120.0) as broker:
        first = await broker.publish("clock.dedupe", b"x", msg_id="m1")
        await clock.advance(119.0)
        assert (await broker.publish("clock.dedupe", b"x", msg_id="m1")).duplicate
        await clock.advance(1.0)
        again = await broker.publish("clock.dedupe", b"x", msg_id="m1")
        assert not again.duplicate and again.seq == first.seq + 1
