"""The ack protocol's pure functions (``backends/jetstream/acks.py``): what a ``$JS.ACK`` reply subject says."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from jetstream_fastapi.backends.jetstream.acks import decode
from jetstream_fastapi.driver import Delivery, Message


@pytest.mark.parametrize(
    ("reply", "delivery"),
    [
        (
            "$JS.ACK.ORDERS.workers.1.42.40.1733520000000000000.7",
            Delivery("ORDERS", 42, 1, 1733520000000000000, "workers"),
        ),
        # Past the attempts looked up in a table, and a token int() reads differently from its text.
        ("$JS.ACK.ORDERS.workers.250.42.40.17.0", Delivery("ORDERS", 42, 250, 17, "workers")),
        ("$JS.ACK.ORDERS.workers.07.42.40.17.0", Delivery("ORDERS", 42, 7, 17, "workers")),
        # The newer form: domain and account hash after $JS.ACK, a random token at the end.
        (
            "$JS.ACK.hub.ACCHASH.ORDERS.workers.3.9.8.1733520000000000001.0.r4nd",
            Delivery("ORDERS", 9, 3, 1733520000000000001, "workers"),
        ),
    ],
)
def test_decode_reads_the_delivery_from_the_reply_subject(reply: str, delivery: Delivery) -> None:
    msg = Msg(None, subject="orders.new", reply=reply, data=b"{}", headers={"Nats-Msg-Id": "a"})
    assert decode(msg) == Message(b"{}", {"Nats-Msg-Id": "a"}, "orders.new", delivery)


def test_decode_gives_a_message_without_headers_a_dict_of_its_own() -> None:
    first, second = (decode(Msg(None, subject="s", reply="$JS.ACK.S.c.1.1.1.1.0", data=b"")) for _ in range(2))
    assert first.headers == {}
    assert first.headers is not second.headers
