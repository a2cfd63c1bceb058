"""Consumer processes SIGKILLed and restarted in a loop while messages flow (issue 9).

Two consumer processes (``tests/fault_consumer.py work``) share one queue; every ~0.7 s one of them is
SIGKILLed and a fresh one started, while this process publishes a steady flow. Afterwards every
acknowledged publish was processed at least once, and the consumer's ack floor reached the end of the
stream. Counts are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import Callable

from nats.js.manager import JetStreamManager

from jetstream_fastapi import JetStreamBroker
from jetstream_fastapi.server import NatsServer
from tests.conftest import WAIT, eventually
from tests.test_faults_process import Child

KILLS = 6
BrokerMaker = Callable[..., JetStreamBroker]


async def test_consumers_killed_and_restarted_in_a_loop_lose_nothing(
    nats_server: NatsServer, brokers: BrokerMaker, admin: JetStreamManager, prefix: str
) -> None:
    subject = f"{prefix}.churn"
    stream = prefix.upper()
    broker = brokers()
    await broker.connect()
    await broker.publish(subject, b"warm-up")  # the stream exists before the consumers start
    rng = random.Random()
    children: list[Child] = []
    running: list[Child] = []

    async def start() -> None:
        child = await Child.start(f"consumer {len(children)}", "work", nats_server.url, subject)
        children.append(child)
        running.append(child)
        await child.until(lambda: "READY" in child.lines, 20, "ready")

    acked: list[str] = []
    flowing = True

    async def publish() -> None:
        count = 0
        while flowing:
            msg_id = f"c-{count}"
            await broker.publish(subject, msg_id.encode(), msg_id=msg_id)
            acked.append(msg_id)
            count += 1
            await asyncio.sleep(0.005)  # a steady flow, not a burst

    try:
        await asyncio.gather(start(), start())
        publisher = asyncio.ensure_future(publish())
        started = time.monotonic()
        for _ in range(KILLS):
            await asyncio.sleep(0.7)
            victim = running.pop(rng.randrange(len(running)))
            victim.process.send_signal(signal.SIGKILL)
            await asyncio.wait_for(victim.process.wait(), WAIT)
            await start()
        flowing = False
        await publisher
        churned = time.monotonic() - started

        def done() -> set[str]:
            return {event.id for child in children for event in child.of("DONE")}

        async def all_processed() -> None:
            assert set(acked) <= done(), len(set(acked) - done())

        await eventually(all_processed, timeout=20)

        async def acked_to_the_end() -> None:
            info = await admin.consumer_info(stream, "churn")
            last = (await admin.stream_info(stream)).state.last_seq
            assert info.ack_floor is not None and info.ack_floor.stream_seq == last, info
            assert (info.num_pending, info.num_ack_pending) == (0, 0), info

        await eventually(acked_to_the_end, timeout=20)
        drained = time.monotonic() - started - churned
    finally:
        for child in children:
            await child.stop()
    per_id = Counter(event.id for child in children for event in child.of("DONE"))
    print(
        f"\n[consumers SIGKILLed {KILLS} times in {churned:.1f}s] published={len(acked)} "
        f"processed={len([i for i in per_id if i in set(acked)])} processed twice or more="
        f"{sum(1 for n in per_id.values() if n > 1)}; everything acked {drained:.2f}s after the last kill"
    )
