"""Fault injection on a 3-node JetStream cluster on loopback (issue #3, item 6 c): the leader of an R3
stream is SIGKILLed while a publisher and a consumer run; after the election both resume and no
acknowledged message is lost.

Counts are printed (run with ``-s``); waits are on counters and server state, each with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from nats.js.manager import JetStreamManager

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.server import NatsServer
from tests.conftest import FAST_BACKOFF, eventually
from tests.test_faults_security import Tally, publish_continuously, stop_publisher

STREAM_NAME = "FAULTS"
STREAM = StreamConfig(name=STREAM_NAME, subjects=["faults.>"], num_replicas=3)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (for the cluster routes)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@dataclass
class Cluster:
    nodes: dict[str, NatsServer]  # server_name -> server

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes.values()]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Three nats-servers routed into cluster ``faults``, each with its own store; stopped at teardown."""
    route_ports = free_ports(3)
    nodes: dict[str, NatsServer] = {}
    for index, port in enumerate(route_ports):
        name = f"n{index + 1}"
        store = tmp_path / name
        store.mkdir()
        routes = ", ".join(f"nats-route://127.0.0.1:{other}" for other in route_ports if other != port)
        conf = tmp_path / f"{name}.conf"
        conf.write_text(
            f'server_name: "{name}"\n'
            f'jetstream {{ store_dir: "{store}" }}\n'
            f'cluster {{ name: "faults", listen: "127.0.0.1:{port}", routes: [ {routes} ] }}\n'
        )
        # jetstream=False: no -js/-sd flags; the config's jetstream block (which must hold the store) enables it.
        nodes[name] = NatsServer(store_dir=store, jetstream=False, args=["-c", str(conf)])
    try:
        await asyncio.gather(*(asyncio.to_thread(node.start) for node in nodes.values()))
        yield Cluster(nodes)
    finally:
        await asyncio.gather(*(asyncio.to_thread(node.stop) for node in nodes.values()))


async def create_when_ready(jsm: JetStreamManager, config: StreamConfig, timeout: float) -> float:
    """Create ``config`` as soon as the cluster has a metadata leader; return how long that took."""
    started = time.monotonic()
    while True:
        try:
            await jsm.add_stream(config)
            return time.monotonic() - started
        except Exception:
            if time.monotonic() - started > timeout:
                raise
        await asyncio.sleep(0.1)  # polling the cluster's own election, which signals nothing


async def test_stream_leader_killed_publishing_and_consuming_resume_nothing_acknowledged_lost(
    cluster: Cluster,
) -> None:
    test_started = time.monotonic()
    admin = await nats.connect(cluster.urls, reconnect_time_wait=0.25, max_reconnect_attempts=-1)
    broker = JetStreamBroker(
        cluster.urls,
        streams=[STREAM],
        auto_provision=False,
        reconnect_time_wait=0.25,
        publish_timeout=5.0,
        ack_wait=2.0,  # deliveries whose acks died with the leader come back quickly
        fetch_wait=1.0,
        backoff=FAST_BACKOFF,
    )
    tally = Tally("c: R3 stream leader SIGKILLed in a 3-node cluster")
    stop = asyncio.Event()
    publisher: asyncio.Task[None] | None = None
    try:
        jsm = admin.jsm(timeout=2.0)
        ready_after = await create_when_ready(jsm, STREAM, timeout=15)
        await broker.connect()  # declares the same stream: found, and equal to the declaration
        await broker.subscribe("faults.work", tally.handler, queue="w")
        publisher = asyncio.create_task(publish_continuously(broker, "faults.work", tally, stop, "c"))
        await tally.until(lambda: len(tally.acked) >= 200 and len(tally.processed) >= 100, 10, "traffic")

        info = await jsm.stream_info(STREAM_NAME)
        assert info.cluster is not None
        assert info.config.num_replicas == 3
        leader = info.cluster.leader
        assert leader in cluster.nodes, info.cluster
        consumer_cluster = (await jsm.consumer_info(STREAM_NAME, "w")).cluster
        consumer_leader = consumer_cluster.leader if consumer_cluster else None
        await asyncio.to_thread(cluster.nodes[leader].kill)
        killed_at = time.monotonic()
        mark = len(tally.acked)
        processed_at_kill = len(tally.processed)

        await tally.until(lambda: len(tally.acked) >= mark + 100, 20, "publishing after the election")
        stop.set()
        await asyncio.wait_for(publisher, 10)

        new_leader: list[str] = []

        async def elected() -> None:
            try:
                current = (await jsm.stream_info(STREAM_NAME)).cluster
            except Exception as error:  # the admin connection may still be moving off the dead node
                raise AssertionError(repr(error)) from None
            assert current is not None
            assert current.leader not in (None, leader), current
            new_leader.append(current.leader)

        await eventually(elected, timeout=10)
        await tally.until(lambda: not tally.lost, 15, "every acknowledged message processed")
        drained_after = time.monotonic() - killed_at
        outage = tally.outage()
        await broker.wait_until_idle(10)
    finally:
        stop.set()
        await stop_publisher(publisher)
        await broker.disconnect()
        await admin.close()
    tally.report(
        f"cluster ready (R3 stream created) in {ready_after:.2f}s; stream leader {leader} killed after "
        f"acked={mark} processed={processed_at_kill} "
        f"(consumer leader was {consumer_leader}); new stream leader {new_leader[-1]}; {outage}; "
        f"all acked processed {drained_after:.2f}s after the kill; "
        f"test took {time.monotonic() - test_started:.2f}s"
    )
    assert not tally.lost


async def test_consumer_leader_killed_with_a_backlog_consuming_resumes_when_the_new_leader_answers(
    cluster: Cluster,
) -> None:
    """A 503 while the consumer leader is elected starts a check, not a recreate: pulls resume as soon as
    the new leader answers (before this release: 10.2-10.7 s after the kill, 2.4-4.1 s after the election)."""
    admin = await nats.connect(cluster.urls, reconnect_time_wait=0.25, max_reconnect_attempts=-1)
    jsm = admin.jsm(timeout=1.0)
    broker: JetStreamBroker | None = None
    try:
        await create_when_ready(jsm, STREAM, timeout=15)
        # Create the durable (the broker updates it to its own config), find its leader, and connect the
        # consuming broker to another node.
        setup = JetStreamBroker(cluster.urls, streams=[STREAM], auto_provision=False)
        await setup.connect()
        total = 2000
        await setup.publish_many([("faults.backlog", str(n).encode()) for n in range(total)], timeout=30)
        await setup.disconnect()
        config = ConsumerConfig(durable_name="b", filter_subject="faults.backlog", ack_policy=AckPolicy.EXPLICIT)
        await jsm.add_consumer(STREAM_NAME, config)
        consumer_cluster = (await jsm.consumer_info(STREAM_NAME, "b")).cluster
        assert consumer_cluster is not None and consumer_cluster.leader in cluster.nodes
        leader = consumer_cluster.leader
        survivor = next(node for name, node in cluster.nodes.items() if name != leader)
        broker = JetStreamBroker(
            survivor.url, streams=[STREAM], auto_provision=False, reconnect_time_wait=0.25, fetch_wait=1.0
        )
        await broker.connect()
        seen: dict[bytes, float] = {}
        warm, done = asyncio.Event(), asyncio.Event()

        async def handler(msg: Message) -> None:
            await asyncio.sleep(0.005)
            seen.setdefault(msg.body, time.monotonic())
            if len(seen) >= 200:
                warm.set()
            if len(seen) == total:
                done.set()

        await broker.subscribe("faults.backlog", handler, queue="b", concurrency=8, batch_size=8)
        await asyncio.wait_for(warm.wait(), 15)
        await asyncio.to_thread(cluster.nodes[leader].kill)
        killed = time.monotonic()
        elected: list[float] = []

        async def new_leader() -> None:
            try:
                current = (await jsm.consumer_info(STREAM_NAME, "b")).cluster
            except Exception as error:  # no leader yet, or the admin connection is moving off the dead node
                raise AssertionError(repr(error)) from None
            assert current is not None and current.leader not in (None, leader), current
            elected.append(time.monotonic())

        await eventually(new_leader, timeout=20)
        await asyncio.wait_for(done.wait(), 30)
        resumed = min(at for at in seen.values() if at > killed + 0.05)
        counters = broker.subscriptions[0].counters
        print(
            f"\n[consumer leader {leader} killed with a backlog] the new leader was seen by an admin poll "
            f"{elected[0] - killed:.2f}s after the kill; consuming resumed {resumed - killed:.2f}s after it "
            f"({resumed - elected[0]:+.2f}s against that poll); all {total} processed "
            f"{time.monotonic() - killed:.2f}s after it; worker counters {counters}"
        )
        assert "recreated" not in counters  # the consumer was never gone
    finally:
        if broker is not None:
            await broker.disconnect()
        await admin.close()
