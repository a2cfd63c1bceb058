"""What a durable request/reply round trip costs on a real nats-server: ``broker.request`` to a handler that
returns its body, one at a time (latency) and many in flight at once (throughput).

A round trip is: the request published and its PubAck awaited, the pull consumer's delivery, the handler,
the reply in core NATS to the requester's inbox (and the ack after it). Both sides run on one broker in
one process, on one embedded nats-server; rounds repeat the two scenarios so the spread shows. The machine
may be shared: read the spread, not one figure.

    .venv/bin/python bench/request_reply.py [--rounds 3] [--requests 500] [--in-flight 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.server import NatsServer

PAYLOAD = b"x" * 256


async def echo(msg: Message) -> bytes:
    return msg.body


async def sequential(broker: JetStreamBroker, subject: str, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        reply = await broker.request(subject, PAYLOAD, timeout=10.0)
        latencies.append(time.perf_counter() - started)
        assert reply.body == PAYLOAD
    return sorted(latencies)


async def in_flight(broker: JetStreamBroker, subject: str, count: int) -> float:
    started = time.perf_counter()
    replies = await asyncio.gather(*(broker.request(subject, PAYLOAD, timeout=30.0) for _ in range(count)))
    elapsed = time.perf_counter() - started
    assert all(reply.body == PAYLOAD for reply in replies)
    return count / elapsed


async def main(rounds: int, requests: int, many: int) -> None:
    with NatsServer() as server:
        async with JetStreamBroker(server.url, fetch_wait=1.0, concurrency=100, batch_size=100) as broker:
            await broker.subscribe("bench.request", echo, queue="bench-replier")
            await sequential(broker, "bench.request", min(50, requests))  # warm-up: stream, consumer, inbox
            print("| round | one at a time: median | p99 | requests/s | all in flight: requests/s |")
            print("|---:|---:|---:|---:|---:|")
            for number in range(1, rounds + 1):
                latencies = await sequential(broker, "bench.request", requests)
                rate = await in_flight(broker, "bench.request", many)
                p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
                print(
                    f"| {number} | {statistics.median(latencies) * 1e3:.2f} ms | {p99 * 1e3:.2f} ms "
                    f"| {len(latencies) / sum(latencies):.0f} | {rate:.0f} ({many} at once) |"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=500, help="requests one at a time per round")
    parser.add_argument("--in-flight", type=int, default=2000, help="requests in flight at once per round")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.requests, arguments.in_flight))
