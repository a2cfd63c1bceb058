"""``exclusive=True`` with real processes (issue #15): three instances of one queue on the session's
nats-server; one handles at a time; the active one is SIGKILLed and a standby takes over.

Each instance (``tests/exclusive_instance.py``) prints when each handler starts and ends, with the wall
time; the test reads those lines, waits on them (each wait bounded), and checks that the handlers of two
instances never ran at once, that every handler ran on an instance that called itself active, and that
every message published was handled. It prints the takeover time (kill to the first handler elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from jetstream_fastapi import JetStreamBroker
from jetstream_fastapi.core.exclusive import LEASE
from jetstream_fastapi.server import NatsServer

SCRIPT = Path(__file__).with_name("exclusive_instance.py")
ROOT = SCRIPT.parent.parent
BOUND = 30.0


class Instance:
    """An ``exclusive_instance.py`` subprocess and the lines it printed."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Log) -> None:
        self.name = name
        self.process = process
        self.reader = asyncio.ensure_future(self._read(log))

    async def _read(self, log: Log) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            await log.add(raw.decode().split())


class Log:
    """Every line of every instance, awaitable."""

    def __init__(self) -> None:
        self.lines: list[list[str]] = []
        self.changed = asyncio.Condition()

    async def add(self, words: list[str]) -> None:
        async with self.changed:
            self.lines.append(words)
            self.changed.notify_all()

    def of(self, kind: str) -> list[list[str]]:
        return [words for words in self.lines if words and words[0] == kind]

    async def wait(self, check: object, what: str) -> None:
        async with asyncio.timeout(BOUND), self.changed:
            await self.changed.wait_for(check)  # type: ignore[arg-type]


async def test_three_instances_one_active_and_a_standby_takes_over_after_a_kill(
    nats_server: NatsServer, prefix: str
) -> None:
    subject, queue, log = f"{prefix}.reports", f"{prefix}-exclusive", Log()
    instances: dict[str, Instance] = {}
    for name in ("i1", "i2", "i3"):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            nats_server.url,
            subject,
            queue,
            name,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=asyncio.subprocess.PIPE,
        )
        instances[name] = Instance(name, process, log)
    publisher = JetStreamBroker(nats_server.url)
    await publisher.connect()
    published: list[str] = []
    publishing = True

    async def publish() -> None:
        while publishing:
            body = str(len(published))
            await publisher.publish(subject, body)
            published.append(body)
            await asyncio.sleep(0.02)  # a steady trickle, not a wait for work

    feeder: asyncio.Task[None] | None = None
    try:
        await log.wait(lambda: len(log.of("READY")) == 3, "three instances ready")
        feeder = asyncio.create_task(publish())
        await log.wait(lambda: len(log.of("END")) >= 30, "30 handled")
        first = {words[1] for words in log.of("START")}
        assert len(first) == 1, f"several instances handled messages before the kill: {first}"
        (active,) = first
        killed_at = time.time()
        instances[active].process.send_signal(signal.SIGKILL)
        await instances[active].process.wait()
        await log.wait(lambda: any(words[1] != active for words in log.of("START")), "a standby took over")
        after = [words for words in log.of("START") if words[1] != active]
        takeover = float(after[0][3]) - killed_at
        successor = after[0][1]
        await log.wait(lambda: sum(words[1] == successor for words in log.of("END")) >= 30, "30 more handled")
        publishing = False
        await feeder
        feeder = None
        handled = {words[2] for words in log.of("END")}
        await log.wait(lambda: set(published) <= {words[2] for words in log.of("END")}, "every message handled")
        print(
            f"\nexclusive: {len(published)} published, active {active} SIGKILLed, {successor} took over after "
            f"{takeover:.2f}s (lease {LEASE:g}s); {len(handled)} handled before the last wait"
        )
        # No two instances ever ran handlers at once: the killed one's open handlers end at the kill.
        spans: list[tuple[float, float, str]] = []
        for name in instances:
            starts = {w[2]: float(w[3]) for w in log.of("START") if w[1] == name}
            ends = {w[2]: float(w[3]) for w in log.of("END") if w[1] == name}
            spans += [(at, ends.get(body, killed_at), name) for body, at in starts.items()]
        for start, end, name in spans:
            for other_start, other_end, other in spans:
                overlap = other != name and other_start < end and start < other_end
                assert not overlap, f"{name} ({start}-{end}) and {other} ({other_start}-{other_end}) ran at once"
        assert {w[1] for w in log.of("START")} == {active, successor}
        assert all(w[4] == "True" for w in log.of("START")), "a handler ran on an instance not marked active"
    finally:
        publishing = False
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
        for instance in instances.values():
            with contextlib.suppress(ProcessLookupError):
                instance.process.send_signal(signal.SIGTERM)
        for instance in instances.values():
            try:
                await asyncio.wait_for(instance.process.wait(), 10)
            except TimeoutError:
                instance.process.kill()
                await instance.process.wait()
            await instance.reader
        await publisher.disconnect()
