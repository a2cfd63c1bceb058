"""``faults.drop_connection()`` against the real thing: a nats-server killed and started again on its store.

The same test body runs on both brokers: on the server the connection really goes (SIGKILL) and comes
back (a restart on the same store); on memory it is dropped and restored, on a ManualClock. What a user
sees must match: not connected, publishes time out with :class:`PublishTimeoutError`, and a retry with the
same ``msg_id`` after the reconnect is stored (and handled) exactly once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetstream_fastapi import InMemoryBroker, JetStreamBroker, PublishTimeoutError
from jetstream_fastapi.clock import ManualClock
from jetstream_fastapi.server import NatsServer
from tests.conftest import FAST_BACKOFF, eventually
from tests.test_contract import Recorder

RESTART_WAIT = 30.0  # JetStream recovers its store before it answers again


class Link:
    """The connection of a test's broker: really lost on the server, dropped by a fault on memory."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.clock = ManualClock()
        self.server: NatsServer | None = None
        if kind == "jetstream":
            self.server = request.getfixturevalue("fresh_server")
            self.broker: Any = JetStreamBroker(
                # A short ack wait: the restarted server may have forgotten the last acks (they are not
                # fsynced) and delivers those messages again after it.
                self.server.url,
                reconnect_time_wait=0.1,
                fetch_wait=1.0,
                backoff=FAST_BACKOFF,
                ack_wait=2.0,
            )
        else:
            self.broker = InMemoryBroker(clock=self.clock, backoff=FAST_BACKOFF)

    async def drop(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.kill)
        else:
            self.broker.faults.drop_connection()

        async def down() -> None:
            assert not self.broker.is_connected

        await eventually(down)

    async def restore(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.start)
        else:
            self.broker.faults.restore_connection()

        async def up() -> None:
            assert self.broker.is_connected and await self.broker.ping()

        await eventually(up, timeout=RESTART_WAIT)

    async def elapse(self, seconds: float) -> None:
        """On memory, let ``seconds`` pass on the clock; the server's time runs by itself."""
        if self.server is None:
            await self.clock.advance(seconds)


@pytest.mark.parametrize("kind", ["memory", "jetstream"])
async def test_a_lost_connection_times_publishes_out_and_a_retry_is_stored_once(
    kind: str, request: pytest.FixtureRequest, prefix: str
) -> None:
    link = Link(kind, request)
    broker = link.broker
    recorder = Recorder()
    subject = f"{prefix}.orders"
    try:
        await broker.connect()
        await broker.subscribe(subject, recorder, queue="orders")
        await broker.publish(subject, b"before")
        await recorder.wait_for(1)

        await link.drop()
        assert not await broker.ping()
        publishing = asyncio.ensure_future(broker.publish(subject, b"doubt", msg_id=f"{prefix}-doubt", timeout=0.5))
        await link.elapse(0.5)
        with pytest.raises(PublishTimeoutError):
            await asyncio.wait_for(publishing, 10)

        await link.restore()
        retry = await broker.publish(subject, b"doubt", msg_id=f"{prefix}-doubt")
        # On memory the held publish was sent on restore, so the retry is a duplicate; on the server it
        # may or may not have been (JetStream can still be recovering when nats-py flushes its buffer).
        print(f"{kind}: retry after the reconnect duplicate={retry.duplicate}")
        await broker.wait_until_idle(timeout=20)
        print(f"{kind}: handled {[(m.body, m.attempt) for m in recorder.messages]}")
        assert set(recorder.bodies) == {b"before", b"doubt"}
        assert recorder.bodies.count(b"doubt") == 1
        # Only "before" may come twice: a SIGKILLed server can lose its ack, and the consumer's delivery
        # count with it (neither is fsynced), so the second delivery may say attempt 1 again (seen under
        # load: [before 1, before 1, doubt 1]). On memory nothing is lost.
        if isinstance(broker, InMemoryBroker):
            assert retry.duplicate
            assert len(recorder.messages) == 2
    finally:
        await broker.disconnect()
