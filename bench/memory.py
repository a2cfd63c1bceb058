"""Memory: peak RSS while ours drains a backlog, and RSS across many publish_many calls.

Each measurement runs in a fresh subprocess (this file run as a script, on the benchmark's event loop:
``asyncio`` or ``uvloop``), so that nothing the benchmark process allocated before counts. RSS comes
from ``/proc/self/status``: ``VmRSS`` (now) and ``VmHWM`` (peak), the peak being reset to the current
RSS just before the measured work (``/proc/self/clear_refs``).

* ``drain``: connect, read the idle RSS, subscribe (batch 100, concurrency 100, no-op handler) to a
  subject whose stream already holds the backlog, read the peak once every message is handled.
* ``publish``: connect, one warm-up chunk of publish_many, read RSS, then publish ``n`` messages in chunks
  of 10,000 (window 256).

Both also read the RSS after each tenth of the work, so that growth that goes on (a leak) can be told
from first-use allocations (arenas, caches) that stop once the process has warmed up.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from dataclasses import dataclass

from common import (
    BATCH,
    BENCH_DIR,
    PAYLOAD,
    Target,
    fresh_stream,
    prefill,
    proc_status_kb,
    reset_peak_rss,
    run_on,
)

from jetstream_fastapi import JetStreamBroker
from jetstream_fastapi.driver import Message

CHUNK = 10_000
SUBPROCESS_TIMEOUT = 300.0
PUBLISH_STREAM_MAX_MSGS = 100_000  # the publish stream keeps the newest 100k: the disk stays small


@dataclass(frozen=True)
class MemoryResult:
    kind: str
    messages: int
    seconds: float
    idle_kb: int  # drain: connected, before subscribing; publish: after the warm-up chunk
    peak_kb: int  # VmHWM after the work (peak reset at its start)
    after_kb: int  # VmRSS after the work
    samples_kb: list[int]  # VmRSS after each tenth of the work
    peak_reset: bool

    @property
    def peak_over_idle_mb(self) -> float:
        return (self.peak_kb - self.idle_kb) / 1024

    @property
    def growth_mb(self) -> float:
        return (self.after_kb - self.idle_kb) / 1024

    @property
    def steady_growth_mb(self) -> float:
        """From the first tenth of the work to the end: growth that goes on, not first-use allocations."""
        return (self.after_kb - self.samples_kb[0]) / 1024


# -- the subprocess side ------------------------------------------------------------------------------


async def drain(url: str, subject: str, n: int) -> MemoryResult:
    async with JetStreamBroker(url) as broker:
        count = 0
        samples: list[int] = []
        done = asyncio.Event()

        async def handler(message: Message) -> None:
            nonlocal count
            count += 1
            if count % max(1, n // 10) == 0:
                samples.append(proc_status_kb("VmRSS"))
            if count >= n:
                done.set()

        gc.collect()
        idle = proc_status_kb("VmRSS")
        reset = reset_peak_rss()
        start = time.perf_counter()
        await broker.subscribe(subject, handler, queue="memory", batch_size=BATCH, concurrency=BATCH)
        await done.wait()
        seconds = time.perf_counter() - start
        peak, after = proc_status_kb("VmHWM"), proc_status_kb("VmRSS")
        await broker.wait_until_idle()
    return MemoryResult("drain", count, seconds, idle, peak, after, samples, reset)


async def publish(url: str, subject: str, n: int) -> MemoryResult:
    async with JetStreamBroker(url) as broker:
        chunk = [(subject, PAYLOAD)] * CHUNK
        await broker.publish_many(chunk)  # warm-up: first-use allocations are not growth
        gc.collect()
        before = proc_status_kb("VmRSS")
        reset = reset_peak_rss()
        samples: list[int] = []
        start = time.perf_counter()
        for sent in range(0, n, CHUNK):
            await broker.publish_many(chunk[: min(CHUNK, n - sent)])
            if (sent // CHUNK + 1) % max(1, n // CHUNK // 10) == 0:
                samples.append(proc_status_kb("VmRSS"))
        seconds = time.perf_counter() - start
        gc.collect()
        peak, after = proc_status_kb("VmHWM"), proc_status_kb("VmRSS")
    return MemoryResult("publish", n, seconds, before, peak, after, samples or [after], reset)


def child_main(argv: list[str]) -> None:
    kind, url, subject, n, loop = argv[0], argv[1], argv[2], int(argv[3]), argv[4]
    run = drain if kind == "drain" else publish
    result = run_on(loop, run(url, subject, n))
    print(json.dumps(result.__dict__))


# -- the benchmark side --------------------------------------------------------------------------------


async def in_subprocess(kind: str, url: str, subject: str, n: int, loop: str) -> MemoryResult:
    """Run one measurement in a fresh ``memory.py`` subprocess on the event loop ``loop``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH_DIR / "memory.py"),
        kind,
        url,
        subject,
        str(n),
        loop,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=SUBPROCESS_TIMEOUT)
    except TimeoutError:
        proc.kill()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"memory {kind} subprocess failed with exit code {proc.returncode}")
    return MemoryResult(**json.loads(out))


async def measure_drain(url: str, n: int, loop: str) -> MemoryResult:
    target = Target(url, "BENCH_MEM_DRAIN", "bench.mem.drain")
    async with fresh_stream(url, target.stream, [target.subject]):
        await prefill(target, n)
        return await in_subprocess("drain", url, target.subject, n, loop)


async def measure_publish(url: str, n: int, loop: str) -> MemoryResult:
    subject = "bench.mem.publish"
    async with fresh_stream(url, "BENCH_MEM_PUBLISH", [subject], max_msgs=PUBLISH_STREAM_MAX_MSGS):
        return await in_subprocess("publish", url, subject, n, loop)


if __name__ == "__main__":
    child_main(sys.argv[1:])
