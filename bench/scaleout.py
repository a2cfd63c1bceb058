"""Scale-out: 1, 2 and 4 consumer processes on one queue draining one backlog.

For every run: a fresh stream filled with the backlog (not timed), then ``P`` processes
(``scaleout_worker.py``) each connect a ``JetStreamBroker``; once all are connected they are told to
subscribe at the same moment, on the same durable consumer (queue ``scale``, batch 100, concurrency
100 each). The run ends when the consumer has nothing pending and nothing unacked; its time is from the
"go" to the last handled message of any process. Reported: aggregate msg/s, the consumers' CPU (all
processes) and nats-server's CPU per message, and how many of the machine's cores the two used
together over the run (``/proc``), which shows where the bound is.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass

import nats
from common import BENCH_DIR, PAYLOAD, RUN_TIMEOUT, Target, fresh_stream, proc_cpu_seconds

from jetstream_fastapi import JetStreamBroker

PROCESSES = (1, 2, 4)
HANDLERS = ("noop", "1ms")
CHUNK = 2048  # messages per publish_many call while filling the backlog
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class ScaleSample:
    processes: int
    handler: str
    messages: int
    seconds: float
    client_cpu: float  # CPU seconds of all consumer processes, from "go" to their exit
    server_cpu: float  # CPU seconds of nats-server over the run
    per_process: tuple[int, ...]  # messages each process handled

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.client_cpu / self.messages * 1e6

    @property
    def server_us(self) -> float:
        return self.server_cpu / self.messages * 1e6

    @property
    def cores_busy(self) -> float:
        """Cores used by the consumers and nats-server together, on average over the run."""
        return (self.client_cpu + self.server_cpu) / self.seconds


async def fill(target: Target, n: int) -> None:
    async with JetStreamBroker(target.url) as broker:
        for start in range(0, n, CHUNK):
            await broker.publish_many([(target.subject, PAYLOAD)] * min(CHUNK, n - start))


async def drained(url: str, stream: str, n: int, deadline: float) -> None:
    """Return once the consumer has acknowledged the whole backlog of ``n`` (its ack floor reached the last
    message: right after its creation a consumer may report nothing pending before it has counted)."""
    nc = await nats.connect(url)
    try:
        jsm = nc.jsm()
        while True:
            try:
                info = await jsm.consumer_info(stream, "scale")
            except nats.js.errors.NotFoundError:
                info = None  # not created yet: the processes are still subscribing
            done = info is not None and info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= n
            if info is not None and done and not info.num_pending and not info.num_ack_pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"scale-out on {stream}: backlog not drained within {RUN_TIMEOUT:g} s")
            await asyncio.sleep(0.02)
    finally:
        await nc.close()


async def scale_run(
    url: str, server_pid: int, processes: int, handler: str, n: int, rnd: int, loop: str
) -> ScaleSample:
    target = Target(
        url, f"BENCH_SCALE_{processes}_{handler.upper()}_R{rnd}", f"bench.scale.{processes}.{handler}.r{rnd}"
    )
    async with fresh_stream(url, target.stream, [target.subject]):
        await fill(target, n)
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(BENCH_DIR / "scaleout_worker.py"),
                url,
                target.subject,
                handler,
                loop,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(processes)
        ]
        try:
            for worker in workers:
                assert worker.stdout is not None
                line = await asyncio.wait_for(worker.stdout.readline(), READY_TIMEOUT)
                if line != b"ready\n":
                    raise RuntimeError(f"a scale-out consumer did not start: {line!r}")
            server_cpu = proc_cpu_seconds(server_pid)
            start = time.time()
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(b"go\n")
                await worker.stdin.drain()
            await drained(url, target.stream, n, time.monotonic() + RUN_TIMEOUT)
            server_cpu = proc_cpu_seconds(server_pid) - server_cpu
            reports = []
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.close()
                out, _ = await asyncio.wait_for(worker.communicate(), READY_TIMEOUT)
                reports.append(json.loads(out.decode().strip().splitlines()[-1]))
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()
    handled = sum(r["messages"] for r in reports)
    if handled < n:
        raise RuntimeError(f"scale-out: {handled} of {n} messages handled")
    return ScaleSample(
        processes=processes,
        handler=handler,
        messages=n,  # redeliveries, if any, show in per_process adding up to more
        seconds=max(r["last"] for r in reports) - start,
        client_cpu=sum(r["cpu"] for r in reports),
        server_cpu=server_cpu,
        per_process=tuple(r["messages"] for r in reports),
    )
