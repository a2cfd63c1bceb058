"""The PubAck inbox (``backends/jetstream/pubacks.py``) against a real nats-server: requests with a long
timeout share one timer per slot and still time out, no earlier than their deadline; short ones keep a
timer of their own; nothing is left behind."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jetstream_fastapi.backends.jetstream.pubacks import SHARED_TIMERS_FROM, TIMER_SLOT, PubAckInbox
from tests.conftest import WAIT


class Silent:
    """A responder that receives requests and never answers (so the server sends no "no responders")."""

    def __init__(self, expected: int, replies: PubAckInbox) -> None:
        self.expected = expected
        self.replies = replies
        self.received = 0
        self.slots_when_all_in: int | None = None
        self.all_in = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        self.received += 1
        if self.received == self.expected:
            self.slots_when_all_in = len(self.replies._slots)
            self.all_in.set()


async def test_long_timeouts_share_a_timer_per_slot_and_time_out_after_their_deadline(
    admin_nc: NATS, prefix: str
) -> None:
    replies = PubAckInbox(admin_nc)
    await replies.start()
    silent = Silent(50, replies)
    await admin_nc.subscribe(f"{prefix}.silent", cb=silent.on_msg)
    timeout = SHARED_TIMERS_FROM + 0.1
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(replies.request(f"{prefix}.silent", b"x", None, timeout) for _ in range(50)), return_exceptions=True
        ),
        WAIT,
    )
    elapsed = loop.time() - started
    assert silent.all_in.is_set()
    assert all(isinstance(outcome, TimeoutError) for outcome in outcomes), outcomes
    # 50 deadlines within a few milliseconds: one or two slots of TIMER_SLOT, not 50 timers.
    assert silent.slots_when_all_in is not None and 1 <= silent.slots_when_all_in <= 2
    assert elapsed >= timeout  # a shared timer fires at its slot's end, never before a deadline in it
    assert replies._slots == {} and replies._waiting == {}


async def test_a_short_timeout_keeps_its_own_timer(admin_nc: NATS, prefix: str) -> None:
    replies = PubAckInbox(admin_nc)
    await replies.start()
    silent = Silent(1, replies)
    await admin_nc.subscribe(f"{prefix}.silent", cb=silent.on_msg)
    short = min(0.05, SHARED_TIMERS_FROM / 2)
    request = asyncio.ensure_future(replies.request(f"{prefix}.silent", b"x", None, short))
    await asyncio.wait_for(silent.all_in.wait(), WAIT)
    assert silent.slots_when_all_in == 0
    outcome = await asyncio.wait_for(asyncio.gather(request, return_exceptions=True), WAIT)
    assert isinstance(outcome[0], TimeoutError)
    assert replies._waiting == {}


async def test_answered_requests_return_their_reply_and_their_slots_empty_when_due(
    admin_nc: NATS, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies = PubAckInbox(admin_nc)
    await replies.start()
    emptied = asyncio.Event()
    expire_slot = replies._expire_slot

    def watched(slot: int) -> None:
        expire_slot(slot)
        if not replies._slots:
            emptied.set()

    monkeypatch.setattr(replies, "_expire_slot", watched)

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data.upper())

    await admin_nc.subscribe(f"{prefix}.echo", cb=echo)
    subject = f"{prefix}.echo"
    answers = await asyncio.gather(
        *(replies.request(subject, f"m{i}".encode(), None, SHARED_TIMERS_FROM) for i in range(20))
    )
    assert [answer.data for answer in answers] == [f"M{i}".encode() for i in range(20)]
    assert replies._waiting == {}
    # The answered tokens stay in their slot until its timer fires, which then expires nothing.
    last_slot = max(replies._slots)
    await asyncio.wait_for(emptied.wait(), WAIT)
    assert asyncio.get_running_loop().time() >= last_slot * TIMER_SLOT - 0.001
