"""One consumer process of the scale-out scenario (``bench/scaleout.py`` starts 1, 2 or 4 of them).

Usage::

    scaleout_worker.py NATS_URL SUBJECT {noop|1ms} {asyncio|uvloop}

Connects a ``JetStreamBroker``, prints ``ready``, and on a ``go`` line on stdin subscribes to ``SUBJECT``
on the shared queue ``scale`` (batch 100, concurrency 100). At end of input it prints one JSON object
(messages handled, wall time of its last handled message, CPU seconds since ``go``) and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from common import BATCH, run_on

from jetstream_fastapi import JetStreamBroker, Message

QUEUE = "scale"
HANDLER_SLEEP = 0.001


async def main(url: str, subject: str, handler_kind: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    count = 0
    last = 0.0

    async def noop(message: Message) -> None:
        nonlocal count, last
        count += 1
        last = time.time()

    async def sleepy(message: Message) -> None:
        await asyncio.sleep(HANDLER_SLEEP)
        await noop(message)

    async with JetStreamBroker(url) as broker:
        print("ready", flush=True)
        if await reader.readline() != b"go\n":
            return
        cpu = time.process_time()
        handler = noop if handler_kind == "noop" else sleepy
        await broker.subscribe(subject, handler, queue=QUEUE, batch_size=BATCH, concurrency=BATCH)
        await reader.read()  # until the parent closes our stdin
        cpu = time.process_time() - cpu
    print(json.dumps({"messages": count, "last": last, "cpu": cpu}), flush=True)


if __name__ == "__main__":
    url, subject, handler_kind, loop_name = sys.argv[1:]
    run_on(loop_name, main(url, subject, handler_kind))
