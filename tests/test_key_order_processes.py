"""``key_order=True`` with real processes (issue #15): three instances of one key-ordered queue on the
session's nats-server, 50 keys, 5,000 messages, a handler with random short delays and a few first-attempt
failures; one instance is SIGKILLed and another restarted (SIGTERM, then a new process) mid-run.

Each instance (``tests/key_order_instance.py``) prints when each handler starts and ends, with the wall
time. Afterwards, for every key: the handled messages (ordered by time, over all instances) never go
backwards in stream order (a message the killed instance handled but could not ack comes again, right
after itself), no two handlers of one key overlapped, and every message was handled (lost = 0). The run
shows parallelism: more than one key in flight at once. Printed: time, redeliveries, most keys at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

from jetstream_fastapi import JetStreamBroker
from jetstream_fastapi.server import NatsServer

SCRIPT = Path(__file__).with_name("key_order_instance.py")
ROOT = SCRIPT.parent.parent
BOUND = 90.0
KEYS = 50
TOTAL = 5000


class Run:
    """The instances and every line they printed, awaitable."""

    def __init__(self, url: str, subject: str, queue: str) -> None:
        self.args = (url, subject, queue)
        self.lines: list[list[str]] = []
        self.changed = asyncio.Condition()
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.readers: list[asyncio.Future[None]] = []

    async def start(self, name: str) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            *self.args,
            name,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,  # the handlers' planned failures are logged there
        )
        self.processes[name] = process
        self.readers.append(asyncio.ensure_future(self._read(process)))
        await self.wait(lambda: ["READY", name] in self.lines)

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            async with self.changed:
                self.lines.append(raw.decode().split())
                self.changed.notify_all()

    def of(self, kind: str) -> list[list[str]]:
        return [words for words in self.lines if words and words[0] == kind and len(words) == 6]

    def done(self) -> set[int]:
        return {int(words[3]) for words in self.of("DONE")}

    async def wait(self, check: object) -> None:
        async with asyncio.timeout(BOUND), self.changed:
            await self.changed.wait_for(check)  # type: ignore[arg-type]


async def test_three_instances_keep_each_keys_order_through_a_kill_and_a_restart(
    nats_server: NatsServer, prefix: str
) -> None:
    run = Run(nats_server.url, f"{prefix}.orders.*.events", f"{prefix}-ordered")
    publisher = JetStreamBroker(nats_server.url)
    await publisher.connect()
    began = time.monotonic()
    try:
        await asyncio.gather(*(run.start(name) for name in ("i1", "i2", "i3")))
        messages = [(f"{prefix}.orders.k{n % KEYS}.events", str(n)) for n in range(TOTAL)]
        await publisher.publish_many(messages)
        await run.wait(lambda: len(run.done()) >= TOTAL // 4)
        run.processes["i1"].send_signal(signal.SIGKILL)
        killed_at = time.time()
        await run.wait(lambda: len(run.done()) >= TOTAL // 2)
        run.processes["i2"].send_signal(signal.SIGTERM)
        await asyncio.wait_for(run.processes["i2"].wait(), BOUND)
        await run.start("i2b")
        await run.wait(lambda: len(run.done()) >= TOTAL)
        elapsed = time.monotonic() - began
    finally:
        for process in run.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in run.processes.values():
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        await asyncio.gather(*run.readers)
        await publisher.disconnect()
    # Per key, in time order over every instance.
    spans: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    open_starts: dict[tuple[str, int, str], float] = {}
    for words in sorted(run.of("START") + run.of("DONE"), key=lambda w: float(w[5])):
        kind, name, key, n, attempt, at = words
        if kind == "START":
            open_starts[(name, int(n), attempt)] = float(at)
        else:
            spans[key].append((open_starts.pop((name, int(n), attempt)), float(at), int(n)))
    for (name, n, attempt), at in open_starts.items():  # failed attempts, the killed instance's last handlers
        failed = n % 97 == 0 and attempt == "1"
        end = killed_at if name == "i1" and not failed else at  # a failure ends as it starts, near enough
        spans[f"k{n % KEYS}"].append((at, max(at, end), n))
    backwards = overlaps = 0
    for key_spans in spans.values():
        key_spans.sort()
        handled = [n for _, _, n in key_spans]
        backwards += sum(1 for a, b in itertools.pairwise(handled) if b < a)
        overlaps += sum(1 for a, b in itertools.pairwise(key_spans) if b[0] < a[1])
    events = sorted(
        [(a, 1) for ks in spans.values() for a, _, _ in ks] + [(b, -1) for ks in spans.values() for _, b, _ in ks]
    )
    most = now = 0
    for _, step in events:  # at equal times the end (-1) comes first
        now += step
        most = max(most, now)
    retried = sum(1 for w in run.of("DONE") if w[4] != "1" and int(w[3]) % 97 == 0)
    redelivered = sum(1 for w in run.of("DONE") if w[4] != "1" and int(w[3]) % 97 != 0)
    lost = TOTAL - len(run.done())
    print(
        f"\nkey order: {TOTAL} messages, {KEYS} keys, 3 instances (i1 SIGKILLed, i2 restarted) in {elapsed:.1f}s; "
        f"{retried} handled after a failure, {redelivered} after the kill, most handlers at once {most}; "
        f"backwards {backwards}, "
        f"overlaps {overlaps}, lost {lost}"
    )
    assert lost == 0
    assert backwards == 0
    assert overlaps == 0
    assert most > 1
