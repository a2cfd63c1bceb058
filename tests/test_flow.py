"""The pull worker's hot path: slot accounting (pure), lanes fanning out, and the nats-py shortcuts."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from nats.aio.msg import Msg

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.backends.jetstream.flow import Slots
from jetstream_fastapi.backends.jetstream.lanes import INLINE_AFTER, Lanes
from jetstream_fastapi.backends.jetstream.worker import decode
from tests.conftest import WAIT


def test_nothing_is_pulled_until_threshold_slots_are_free() -> None:
    slots = Slots(concurrency=8, batch_size=12)
    assert slots.threshold == 2  # a quarter of min(batch, concurrency)
    assert slots.to_pull(ready=0) == 8
    slots.outstanding = 8
    for _ in range(8):
        slots.delivered()
    assert slots.outstanding == 0
    assert slots.to_pull(ready=8) == 0  # all delivered, waiting for lanes
    slots.in_flight = 7
    assert slots.to_pull(ready=0) == 0  # 1 free < threshold
    slots.in_flight = 6
    assert slots.to_pull(ready=0) == 2


def test_the_threshold_follows_the_handlers() -> None:
    slots = Slots(concurrency=256, batch_size=256)
    assert slots.threshold == 64
    slots.handled(0.010)  # slow handlers: each pending pull idles a slot
    assert slots.threshold == 4
    slots.in_flight = 252
    assert slots.to_pull(ready=0) == 4
    slots.handled(0.00002)
    assert slots.threshold == 64
    assert slots.to_pull(ready=0) == 0
    assert Slots(concurrency=2, batch_size=10).threshold == 1


def test_free_slots_count_every_holder() -> None:
    slots = Slots(concurrency=10, batch_size=4)
    slots.handled(1.0)
    assert slots.threshold == 1
    slots.outstanding, slots.in_flight = 3, 4
    assert slots.free(ready=2) == 1
    assert slots.to_pull(ready=2) == 1
    assert slots.to_pull(ready=3) == 0


def test_an_expired_request_gives_back_its_undelivered_slots() -> None:
    slots = Slots(concurrency=10, batch_size=10)
    slots.outstanding = 10
    slots.delivered()
    slots.expired(pending=9)
    assert slots.outstanding == 0
    slots.expired(pending=5)  # a late status cannot make it negative
    slots.delivered()
    assert slots.outstanding == 0


def test_decode_reads_both_ack_subject_forms() -> None:
    old = "$JS.ACK.ORDERS.workers.2.41.17.1764340000000000001.5"
    new = "$JS.ACK.hub.ACCHASH.ORDERS.workers.2.41.17.1764340000000000001.5.tok"
    for reply in (old, new):
        message = decode(Msg(_client=None, subject="orders.a", reply=reply, data=b"x", headers=None))  # type: ignore[arg-type]
        assert message.delivery is not None
        delivery = message.delivery
        assert (delivery.stream, delivery.consumer) == ("ORDERS", "workers")
        assert (delivery.sequence, delivery.attempt, delivery.timestamp_ns) == (41, 2, 1764340000000000001)
        assert (message.body, message.subject, message.headers) == (b"x", "orders.a", {})


async def test_a_burst_reaches_every_lane_when_handlers_wait(
    brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    # Lanes wake each other in a fan-out; every one of the 64 must end up running at once, or this
    # handler (which waits for all 64 to be inside) never returns.
    broker = brokers()
    await broker.connect()
    subject = f"{prefix}.burst"
    concurrency = 64
    await broker.publish_many([(subject, b"x")] * concurrency)
    inside = 0
    all_inside = asyncio.Event()

    async def handler(msg: Message) -> None:
        nonlocal inside
        inside += 1
        if inside == concurrency:
            all_inside.set()
        await all_inside.wait()

    await broker.subscribe(subject, handler, queue="burst", concurrency=concurrency, batch_size=concurrency)
    await asyncio.wait_for(all_inside.wait(), WAIT)
    await broker.wait_until_idle()


# -- lanes ------------------------------------------------------------------------------------------


async def test_fast_handlers_run_a_burst_on_one_lane() -> None:
    seen: list[tuple[int, asyncio.Task[object] | None]] = []
    done = asyncio.Event()

    async def handle(item: int) -> None:  # never suspends
        seen.append((item, asyncio.current_task()))
        if len(seen) == 100:
            done.set()

    lanes: Lanes[int] = Lanes(50, handle, "test")
    for item in range(100):
        lanes.push(item)
    await asyncio.wait_for(done.wait(), WAIT)
    assert [item for item, _ in seen] == list(range(100))
    assert len({task for _, task in seen}) == 1
    assert len(lanes.tasks) <= 3  # the one that ran the burst and the two it woke
    assert lanes.close() == []
    await asyncio.wait_for(asyncio.gather(*lanes.tasks), WAIT)


async def test_lanes_never_exceed_the_limit_and_close_returns_what_was_not_taken() -> None:
    limit = 5
    running = 0
    peak = 0
    release = asyncio.Event()
    full = asyncio.Event()

    async def handle(item: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == limit:
            full.set()
        await release.wait()
        running -= 1

    lanes: Lanes[int] = Lanes(limit, handle, "test")
    for item in range(12):
        lanes.push(item)
    await asyncio.wait_for(full.wait(), WAIT)
    assert len(lanes.tasks) == limit
    left = lanes.close()
    assert left == list(range(limit, 12))
    release.set()
    await asyncio.wait_for(asyncio.gather(*lanes.tasks), WAIT)  # each finished its item and ended
    assert peak == limit
    assert lanes.ready == deque()


async def _warm_up(lanes: Lanes[int], done: asyncio.Event) -> None:
    """Push INLINE_AFTER items that return without suspending, and wait until lanes ran them."""
    for item in range(INLINE_AFTER):
        lanes.push(-1 - item)
    await asyncio.wait_for(done.wait(), WAIT)


async def test_offer_runs_handlers_that_never_suspend_on_the_callers_task_once_proven() -> None:
    seen: list[tuple[int, asyncio.Task[object] | None]] = []
    warm = asyncio.Event()

    async def handle(item: int) -> None:  # never suspends
        seen.append((item, asyncio.current_task()))
        if len(seen) == 1 + INLINE_AFTER:  # item 0, then the warm-up
            warm.set()

    lanes: Lanes[int] = Lanes(10, handle, "test")
    await lanes.offer(0)  # not proven yet: a lane runs it
    assert not lanes.inline
    assert seen == []
    seen.clear()
    await _warm_up(lanes, warm)
    assert lanes.inline
    lane_tasks = set(lanes.tasks)
    seen.clear()
    for item in range(50):
        await lanes.offer(item)
    assert seen == [(item, asyncio.current_task()) for item in range(50)]
    assert lanes.tasks == lane_tasks  # no lane was woken or started for them
    assert lanes.close() == []
    await asyncio.wait_for(asyncio.gather(*lanes.tasks), WAIT)


async def test_offer_hands_everything_to_lanes_for_good_after_a_handler_suspends_inline() -> None:
    limit = 4
    warm = asyncio.Event()
    release = asyncio.Event()
    count = 0
    total = INLINE_AFTER + 1 + limit + 2 * INLINE_AFTER
    all_done = asyncio.Event()
    waiting: list[int] = []
    all_waiting = asyncio.Event()

    async def handle(item: int) -> None:
        nonlocal count
        count += 1
        if count == INLINE_AFTER:
            warm.set()
        if count == total:
            all_done.set()
        if item == 0:
            await asyncio.sleep(0)  # suspends briefly, on the caller's task
        elif item > 0:
            waiting.append(item)
            if len(waiting) == limit:
                all_waiting.set()
            await release.wait()  # items 1.. must wait side by side on lanes, not one after another

    lanes: Lanes[int] = Lanes(limit, handle, "test")
    await _warm_up(lanes, warm)
    assert lanes.inline
    await lanes.offer(0)
    assert not lanes.inline
    for item in range(1, 1 + limit):
        await lanes.offer(item)  # returns at once: pushed to a lane
    await asyncio.wait_for(all_waiting.wait(), WAIT)
    release.set()
    for item in range(limit + 1, limit + 1 + 2 * INLINE_AFTER):
        lanes.push(-item)  # a long streak again: offer must not go back to running items inline
    await asyncio.wait_for(all_done.wait(), WAIT)
    assert not lanes.inline
    lanes.close()
    await asyncio.wait_for(asyncio.gather(*lanes.tasks), WAIT)


async def test_handlers_that_wait_for_each_other_never_run_inline() -> None:
    # 8 handlers that each wait until all 8 are inside: inline, the first would hold up the rest forever.
    inside = 0
    all_inside = asyncio.Event()

    async def handle(item: int) -> None:
        nonlocal inside
        inside += 1
        if inside == 8:
            all_inside.set()
        await all_inside.wait()

    lanes: Lanes[int] = Lanes(8, handle, "test")
    for item in range(8):
        await lanes.offer(item)
    await asyncio.wait_for(all_inside.wait(), WAIT)
    assert not lanes.inline
    lanes.close()
    await asyncio.wait_for(asyncio.gather(*lanes.tasks), WAIT)


async def test_offer_queues_behind_waiting_items_and_after_close() -> None:
    release = asyncio.Event()
    order: list[int] = []

    async def handle(item: int) -> None:
        order.append(item)
        if item == 0:
            await release.wait()

    lanes: Lanes[int] = Lanes(1, handle, "test")
    lanes.push(0)  # a lane takes it on the next turn and waits
    lanes.push(1)  # waits for that lane
    await lanes.offer(2)  # must not jump the queue
    assert order == []
    assert list(lanes.ready) == [0, 1, 2]
    await asyncio.sleep(0)
    assert order == [0]
    assert lanes.close() == [1, 2]
    await lanes.offer(3)  # closed: never run
    release.set()
    await asyncio.wait_for(asyncio.gather(*lanes.tasks), WAIT)
    assert order == [0]
