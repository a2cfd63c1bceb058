"""Network faults between the brokers and a real nats-server, through :mod:`tests.faultproxy`.

Publishers publish with a user's retry loop (the same msg id until a PubAck comes), consumers share one
queue, and a seeded schedule of faults (cuts, blackholes, latency; printed, and replayed with
``FAULT_SEED=<seed>``) runs meanwhile. Afterwards: every acknowledged publish was processed at least
once, the stream holds each msg id exactly once, and the consumer's ack floor reached the end of the
stream. Figures are printed (``-s``), never asserted as timings.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable

import nats
from nats.aio.client import Client as NATS

from jetstream_fastapi import JetStreamBroker, JetStreamError, Message
from jetstream_fastapi.server import NatsServer
from tests.faultproxy import FaultProxy, Schedule

DURATION = 7.0  # seconds of faults (a blackhole may carry the schedule a little past it)
PACE = 0.02  # seconds between two publishes of one publisher: a steady flow across the schedule
# Reconnect fast, and notice a blackholed connection within ~2 s (the defaults take 4 minutes).
NETWORK = {"reconnect_time_wait": 0.1, "ping_interval": 1, "max_outstanding_pings": 2, "publish_timeout": 2.0}


async def publish_until_acked(broker: JetStreamBroker, subject: str, msg_id: str, retries: Counter[str]) -> None:
    """What a user writes: retry with the same msg id until the server acknowledges."""
    while True:
        try:
            await broker.publish(subject, msg_id.encode(), msg_id=msg_id)
            return
        except JetStreamError as error:  # PublishTimeoutError, PublishError, ...: safe to retry the same id
            retries[type(error).__name__] += 1
            await asyncio.sleep(0.05)


async def msg_ids_in_stream(nc: NATS, stream: str) -> Counter[str]:
    """Every stored message's ``Nats-Msg-Id``, counted, read straight from the server (not through the proxy)."""
    jsm = nc.jsm()
    last = (await jsm.stream_info(stream)).state.last_seq
    ids: Counter[str] = Counter()
    for seq in range(1, last + 1):
        raw = await jsm.get_msg(stream, seq)
        ids[str((raw.headers or {}).get("Nats-Msg-Id"))] += 1
    return ids


async def test_cuts_blackholes_and_latency_lose_nothing_and_store_each_msg_id_once(
    fresh_server: NatsServer, brokers: Callable[..., JetStreamBroker]
) -> None:
    seed = int(os.environ.get("FAULT_SEED", random.randrange(1_000_000)))
    schedule = Schedule(seed, duration=DURATION, faults=5)
    print(f"\n{schedule}")
    subject = "net.work"
    async with FaultProxy(fresh_server.port) as proxy:
        publishers = [brokers(proxy.url, **NETWORK) for _ in range(2)]
        consumers = [brokers(proxy.url, ack_wait=3.0, fetch_wait=1.0, **NETWORK) for _ in range(2)]
        for broker in publishers + consumers:
            await broker.connect()
        processed: Counter[str] = Counter()

        async def handler(msg: Message) -> None:
            await asyncio.sleep(0.001)
            processed[msg.body.decode()] += 1

        for broker in consumers:
            await broker.subscribe(subject, handler, queue="net", concurrency=8)
        acked: list[str] = []
        retries: Counter[str] = Counter()

        async def publisher(number: int, broker: JetStreamBroker) -> None:
            end = time.monotonic() + DURATION
            count = 0
            while time.monotonic() < end:
                msg_id = f"p{number}-{count}"
                await publish_until_acked(broker, subject, msg_id, retries)
                acked.append(msg_id)
                count += 1
                await asyncio.sleep(PACE)

        started = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(schedule.play(proxy), *(publisher(n, b) for n, b in enumerate(publishers))), 60
        )
        published = time.monotonic()
        for broker in consumers:
            await broker.wait_until_idle(timeout=30)
        idle = time.monotonic()

    nc = await nats.connect(fresh_server.url)
    try:
        stored = await msg_ids_in_stream(nc, "NET")
        info = await nc.jsm().consumer_info("NET", "net")
        last = (await nc.jsm().stream_info("NET")).state.last_seq
    finally:
        await nc.close()
    duplicates = sum(processed.values()) - len(processed)
    print(
        f"published and acked {len(acked)} in {published - started:.2f}s (publish retries {dict(retries)}); "
        f"processed {len(processed)} distinct, {duplicates} processed twice or more; all acked on the server "
        f"{idle - published:.2f}s after the last publish; proxy connections {proxy.connections}, cuts {proxy.cuts}"
    )
    assert set(acked) <= set(processed), sorted(set(acked) - set(processed))[:10]
    assert set(stored) == set(acked)
    assert all(count == 1 for count in stored.values()), [k for k, v in stored.items() if v > 1][:10]
    assert info.ack_floor is not None and info.ack_floor.stream_seq == last, info
    assert (info.num_pending, info.num_ack_pending) == (0, 0), info
