"""A server restart (SIGTERM, started again on the same port and store) while a backlog drains.

During a SIGTERM nats-server stops JetStream before it closes client connections: pull requests and acks
sent in that window get 503 "no responders" replies, or none at all. The worker must tell that apart
from a deleted consumer, resend the acks that may have been lost, and consume at full rate again as soon
as the server answers. The recovery time is printed, not asserted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.server import NatsServer

TOTAL = 6000
RESTART_AFTER = 2000


async def test_server_restart_mid_backlog_recovers_at_once_without_recreating(
    fresh_server: NatsServer, brokers: Callable[..., JetStreamBroker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jetstream_fastapi")
    # ack_wait 30 s (the server's default): a message whose ack was lost at the restart would come back only
    # after it, so finishing well within it shows that lost acks were resent.
    broker = brokers(fresh_server.url, reconnect_time_wait=0.1, ack_wait=30.0, fetch_wait=5.0)
    await broker.connect()
    subject = "backlog.work"
    await broker.publish_many([(subject, str(i).encode()) for i in range(TOTAL)], timeout=30)
    seen: set[bytes] = set()
    redelivered = 0
    restart_due, all_seen = asyncio.Event(), asyncio.Event()
    after_restart: list[float] = []
    restarted_at: list[float] = []

    async def handler(msg: Message) -> None:
        nonlocal redelivered
        await asyncio.sleep(0.002)
        redelivered += msg.attempt > 1
        seen.add(msg.body)
        if restarted_at and not after_restart:
            after_restart.append(time.monotonic())
        if len(seen) >= RESTART_AFTER:
            restart_due.set()
        if len(seen) == TOTAL:
            all_seen.set()

    await broker.subscribe(subject, handler, queue="w", concurrency=64, batch_size=64)
    await asyncio.wait_for(restart_due.wait(), 60)
    stopping = time.monotonic()
    await asyncio.to_thread(fresh_server.stop, remove_store=False)
    await asyncio.to_thread(fresh_server.start)
    restarted_at.append(time.monotonic())
    await asyncio.wait_for(all_seen.wait(), 60)
    done = time.monotonic()
    await broker.wait_until_idle(timeout=40)
    idle = time.monotonic()
    recreated = [r.getMessage() for r in caplog.records if "recreat" in r.getMessage()]
    multiline = [r.getMessage() for r in caplog.records if "\n" in r.getMessage()]
    first = after_restart[0] - restarted_at[0] if after_restart else float("nan")
    print(
        f"\nrestart took {restarted_at[0] - stopping:.2f}s; first message {first:.2f}s after the server was back; "
        f"the remaining backlog drained {done - restarted_at[0]:.2f}s after it, every message acked "
        f"{idle - restarted_at[0]:.2f}s after it; {redelivered} redelivered; "
        f"{len(recreated)} recreate log lines; worker counters {broker.subscriptions[0].counters}"
    )
    assert len(seen) == TOTAL
    assert not recreated, recreated[:3]  # the consumer was never gone: nothing to recreate
    assert not multiline, multiline[:3]  # one log line per event
    # Every ack lost in the SIGTERM window was resent: no message waited out the 30 s ack wait.
    assert idle - restarted_at[0] < 25.0
