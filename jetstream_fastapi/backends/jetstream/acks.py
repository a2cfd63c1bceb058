"""The JetStream ack protocol as the pull worker speaks it: payloads, and what a ``$JS.ACK`` reply subject says.

Pure functions and constants; the only ``nats`` import is the message type.
"""

from __future__ import annotations

import nats.errors
from nats.aio.msg import Msg

from ...driver import Delivery, Message

ACK = b"+ACK"
NAK = b"-NAK"
IN_PROGRESS = b"+WPI"

SEND_ERRORS = (nats.errors.Error, OSError)
"""What sending an ack, a nak or a pull can raise: the connection is closed or draining, its reconnect
buffer is full, or the socket failed. The server redelivers an unacknowledged message after its ack wait."""


def nak_payload(delay: float) -> bytes:
    """The ``-NAK`` body asking the server to redeliver after ``delay`` seconds."""
    if delay <= 0:
        return NAK
    return b'-NAK {"delay": %d}' % int(delay * 1e9)


_ATTEMPTS = {str(attempt): attempt for attempt in range(1, 101)}
"""The usual delivery attempts by their reply-subject token: a dict lookup costs about a tenth of ``int()``'s
~1,300 CPU instructions, on every message (almost every attempt is 1)."""


def decode(msg: Msg) -> Message:
    """Turn a nats-py JetStream message into a :class:`Message`, reading its delivery from the reply subject."""
    tokens = msg.reply.split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>, or the newer form with
    # <domain>.<account hash> after $JS.ACK and a random token at the end. (Unpacked without a slice, and
    # Delivery given positional arguments: this runs for every message.)
    if len(tokens) == 9:
        _, _, stream, consumer, attempt, sequence, _, timestamp, _ = tokens
    else:
        stream, consumer, attempt, sequence, _, timestamp = tokens[4:10]
    number = _ATTEMPTS.get(attempt) or int(attempt)
    delivery = Delivery(stream, int(sequence), number, int(timestamp), consumer)
    return Message(msg.data, msg.headers or {}, msg.subject, delivery)


def ack_prefix(stream: str, consumer: str) -> str:
    """The start of every v1 ack subject of ``consumer`` of ``stream`` (``$JS.ACK.<stream>.<consumer>.``)."""
    return f"$JS.ACK.{stream}.{consumer}."


def is_ack_of(reply: str, stream: str, consumer: str) -> bool:
    """Whether ``reply`` is an ack subject of a message ``consumer`` of ``stream`` delivered: the v1 form
    (``$JS.ACK.<stream>.<consumer>.``, 9 tokens in all) or the v2 form of nats-server 2.16
    (``$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.``, 11 tokens or more).

    A message on a worker's inbox whose reply is anything else is no delivery of its consumer: someone
    published it there (or made another consumer deliver there), and settling it would ack, nak or
    terminate a message of someone else, or publish to a subject of the sender's choosing."""
    if not reply.startswith("$JS.ACK."):
        return False
    tokens = reply.count(".") + 1
    if tokens != 9 and tokens < 11:
        return False
    try:
        fields = reply_fields(reply)  # stream, consumer, and the delivery count and sequence as numbers
    except ValueError:  # a number token that is not one
        return False
    return fields.get("stream") == stream and fields.get("consumer") == consumer


def reply_fields(reply: str) -> dict[str, object]:
    """The log-record fields of a message known by its ``$JS.ACK`` reply subject (as the front's records have)."""
    tokens = reply.split(".")
    fields = tokens[2:8] if len(tokens) == 9 else tokens[4:10] if len(tokens) >= 10 else []
    if len(fields) < 6:
        return {}
    stream, consumer, attempt, sequence = fields[0], fields[1], fields[2], fields[3]
    return {"stream": stream, "consumer": consumer, "attempt": int(attempt), "sequence": int(sequence)}


def where(reply: str) -> str:
    """``<stream>#<sequence>`` of a message, from its ``$JS.ACK`` reply subject (for log lines)."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return f"{tokens[2]}#{tokens[5]}"
    if len(tokens) >= 10:
        return f"{tokens[4]}#{tokens[7]}"
    return repr(reply)  # not a JetStream reply subject: said as it is
