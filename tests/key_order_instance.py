"""One instance of a key-ordered queue, for tests/test_key_order_processes.py: run as a script, never
imported by pytest.

``python tests/key_order_instance.py <nats-url> <subject> <queue> <name>``
    Consumes ``subject`` on ``queue`` with ``key_order=True, partitions=8`` (ack wait 2 s) and prints
    ``READY <name>`` once subscribed, then ``START <name> <key> <n> <attempt> <wall time>`` and
    ``DONE <name> <key> <n> <attempt> <wall time>`` around each handler, which takes 0-3 ms and fails
    the first attempt of every message whose ``n`` is a multiple of 97. SIGTERM stops it gracefully.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import time

from jetstream_fastapi import Backoff, JetStreamBroker, Message

ACK_WAIT = 2.0
PARTITIONS = 8


def say(*words: object) -> None:
    # One write per line, so that a kill never leaves half a line behind.
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()


async def main(url: str, subject: str, queue: str, name: str) -> None:
    broker = JetStreamBroker(
        url, ack_wait=ACK_WAIT, fetch_wait=1.0, backoff=Backoff(initial=0.02, maximum=0.1, jitter=0.0)
    )
    await broker.connect()

    async def handler(msg: Message) -> None:
        key, n = msg.subject.split(".")[-2], int(msg.body)
        say("START", name, key, n, msg.attempt, repr(time.time()))
        await asyncio.sleep(random.random() * 0.003)
        if n % 97 == 0 and msg.attempt == 1:
            raise RuntimeError("the first attempt fails")
        say("DONE", name, key, n, msg.attempt, repr(time.time()))

    await broker.subscribe(subject, handler, queue=queue, key_order=True, partitions=PARTITIONS)
    say("READY", name)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await broker.disconnect()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
