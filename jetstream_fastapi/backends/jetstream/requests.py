"""Request/reply on a NATS server: the requester's inbox and the replies, in core NATS (never stored).

One wildcard subscription per connection, ``<inbox>.*``, receives every reply of the broker's requests
(the last token names the request); nats-py subscribes it again after each reconnect. A reply published
while the requester is disconnected is lost (core NATS is at most once): its request then times out.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ...driver import Message
from ..base import OnReply, Outgoing


async def open_inbox(nc: NATS, on_reply: OnReply) -> str:
    """Subscribe ``<fresh inbox>.*`` on ``nc`` and hand each reply to ``on_reply``; returns the prefix."""
    prefix = nc.new_inbox()
    start = len(prefix) + 1

    async def received(msg: Msg) -> None:
        on_reply(msg.subject[start:], Message(body=msg.data, headers=dict(msg.headers or {}), subject=msg.subject))

    await nc.subscribe(f"{prefix}.*", cb=received)
    return prefix


async def send_reply(nc: NATS, address: str, message: Outgoing) -> None:
    """Publish a reply to ``address`` (buffered by nats-py while reconnecting; raises when it cannot be)."""
    await nc.publish(address, message.body, headers=message.headers)
