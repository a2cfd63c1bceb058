"""Whether a consumer on the server has nothing left to do, for ``JetStreamBroker.wait_until_idle``.

``num_pending`` can lag a PubAck (the server counts a new message in the consumer's own time: measured 4
early answers in 3,000 publishes), so it is not trusted alone: the last stream sequence of the
consumer's subject, asked for *after* the consumer's info, must have been delivered too. (Not the ack
floor: it stays behind a message that ran out of deliveries, measured on nats-server 2.15.)
"""

from __future__ import annotations

from nats.js.errors import NotFoundError
from nats.js.manager import JetStreamManager


async def last_sequence(jsm: JetStreamManager, stream: str, subject: str) -> int:
    """The sequence of the last message on ``subject`` (wildcards allowed) in ``stream``; 0 if none."""
    try:
        message = await jsm.get_msg(stream, subject=subject)
    except NotFoundError:
        return 0
    return message.seq or 0


async def consumer_idle(jsm: JetStreamManager, stream: str, consumer: str, subject: str) -> bool:
    """Nothing pending, nothing unacknowledged, and the last message of ``subject`` delivered."""
    info = await jsm.consumer_info(stream, consumer)
    if info.num_pending or info.num_ack_pending:
        return False
    delivered = (info.delivered.stream_seq if info.delivered is not None else 0) or 0
    return delivered >= await last_sequence(jsm, stream, subject)
