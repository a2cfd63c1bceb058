"""One instance of an exclusive queue, for tests/test_exclusive_processes.py: run as a script, never
imported by pytest.

``python tests/exclusive_instance.py <nats-url> <subject> <queue> <name>``
    Consumes ``subject`` on ``queue`` with ``exclusive=True`` (2 handlers of ~20 ms, ack wait 2 s) and prints
    ``READY <name>`` once subscribed, then ``START <name> <body> <wall time> <active>`` and
    ``END <name> <body> <wall time>`` around each handler (``active``: what ``Subscription.active`` says).
    SIGTERM stops it gracefully. Every line is flushed at once.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.core.subscription import Subscription

ACK_WAIT = 2.0


def say(*words: object) -> None:
    print(*words, flush=True)


async def main(url: str, subject: str, queue: str, name: str) -> None:
    broker = JetStreamBroker(url, ack_wait=ACK_WAIT, concurrency=2, fetch_wait=1.0)
    await broker.connect()
    subscription: list[Subscription] = []

    async def handler(msg: Message) -> None:
        say("START", name, msg.body.decode(), repr(time.time()), subscription[0].active)
        await asyncio.sleep(0.02)
        say("END", name, msg.body.decode(), repr(time.time()))

    subscription.append(await broker.subscribe(subject, handler, queue=queue, exclusive=True))
    say("READY", name)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await broker.disconnect()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
