"""What every benchmark module shares: the payload, timed samples, per-run streams, optional packages.

The bench modules are plain scripts next to each other (``bench/`` is not a package): ``bench/bench.py``
puts this directory first on ``sys.path``, and so do the subprocess scripts (``memory.py``,
``http_app.py``, ``loadgen.py``) since Python does that for the script it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.abc
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.js.api import StreamConfig

BENCH_DIR = Path(__file__).resolve().parent
PAYLOAD = b"x" * 256
# The HTTP route's request body: an ``Order`` of the README (``{"id": ..., "quantity": 1}``), 256 bytes as
# it arrives and as the route republishes it (``model_dump_json()`` writes the same compact JSON).
ORDER_BODY = b'{"id":"' + b"o" * 234 + b'","quantity":1}'
WINDOW = 256  # publishes in flight in the pipelined scenarios
BATCH = 100  # pull batch in the consume scenarios
RUN_TIMEOUT = 180.0  # bound on one timed run, seconds
NOT_INSTALLED = "not installed"

HAVE_FASTSTREAM = importlib.util.find_spec("faststream") is not None
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
HAVE_HTTPTOOLS = importlib.util.find_spec("httptools") is not None
LOOPS = ("asyncio", "uvloop")  # event loops the benchmark process (and its memory subprocesses) can run on

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """Where one run goes: its own stream capturing exactly one subject."""

    url: str
    stream: str
    subject: str


@dataclass(frozen=True)
class Sample:
    """One timed run: messages, wall seconds, client CPU seconds."""

    messages: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.messages * 1e6


class Timer:
    """Wall and process CPU time between ``start()`` and ``stop()``."""

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def stop(self, messages: int) -> Sample:
        return Sample(messages, time.perf_counter() - self._wall, time.process_time() - self._cpu)


def rotated(items: list[str], rnd: int) -> list[str]:
    """``items`` starting at a different one each round, so that no implementation always runs first."""
    shift = (rnd - 1) % len(items)
    return items[shift:] + items[:shift]


def run_on(loop: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new event loop: ``asyncio``'s default one or ``uvloop``'s."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


@contextlib.asynccontextmanager
async def fresh_stream(url: str, name: str, subjects: list[str], **config: Any) -> AsyncIterator[None]:
    """A stream created before the block and deleted after it (neither is timed)."""
    nc = await nats.connect(url)
    try:
        jsm = nc.jsm()
        await jsm.add_stream(StreamConfig(name=name, subjects=subjects, **config))
        try:
            yield
        finally:
            await jsm.delete_stream(name)
    finally:
        await nc.close()


async def prefill(target: Target, n: int) -> None:
    """Store ``n`` messages on the target's subject (not timed)."""
    nc = await nats.connect(target.url)
    try:
        js = nc.jetstream()
        for start in range(0, n, WINDOW):
            await asyncio.gather(*(js.publish(target.subject, PAYLOAD) for _ in range(min(WINDOW, n - start))))
    finally:
        await nc.close()


async def check_consumed(url: str, stream: str, durable: str, within: float = 10.0) -> None:
    """Raise unless the consumer ends up with nothing pending and nothing unacked (not timed).

    Polls for up to ``within`` seconds: the server applies acks asynchronously, so right after the last
    fire-and-forget ``+ACK`` (even after a flush) it may still count a few as pending.
    """
    nc = await nats.connect(url)
    try:
        jsm = nc.jsm()
        deadline = time.monotonic() + within
        while True:
            info = await jsm.consumer_info(stream, durable)
            if not info.num_pending and not info.num_ack_pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{stream}/{durable}: pending={info.num_pending} ack_pending={info.num_ack_pending}")
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


# -- memory, from /proc (Linux) ----------------------------------------------------------------------


def proc_status_kb(field: str, pid: int | str = "self") -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- CPU placement of the HTTP scenario --------------------------------------------------------------

PIN = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None and os.environ.get("BENCH_PIN") != "0"
"""Whether the HTTP scenario pins its processes: uvicorn alone on CPU 1, wrk and nats-server on CPU 0.
Left to the scheduler, the server under test shared its core with wrk's threads or nats-server in a
different way each run, and one implementation's rounds moved by up to 30% against another's
(``BENCH_PIN=0`` turns it off)."""
SERVER_CPU, LOAD_CPU = "1", "0"


def on_cpu(cpu: str) -> list[str]:
    """The command prefix that starts a process on ``cpu`` (nothing when not pinning)."""
    return ["taskset", "-c", cpu] if PIN else []


def move_to_cpu(pid: int, cpus: str) -> None:
    """Move every thread of process ``pid`` to ``cpus`` (a taskset list such as ``"0"`` or ``"0-1"``)."""
    if PIN:
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, capture_output=True)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- formatting --------------------------------------------------------------------------------------


def spread(values: list[float], fmt: str = ",.0f") -> str:
    """``median (min..max)``."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}..{max(values):{fmt}})"


def ratio(ours: float, other: float) -> str:
    return f"{ours / other:.2f}" if other else "-"


# -- what is installed -------------------------------------------------------------------------------


class _Hidden(importlib.abc.MetaPathFinder):
    """Answers "not installed" for some top-level packages, as if pip had never put them there."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden by the benchmark)", name=fullname)
        return None  # not one of ours: the next finder looks


def hide_packages(*names: str) -> None:
    """Make ``names`` unimportable in this process (call before the library is imported): the library
    then runs as it does where they are not installed, e.g. without the ``metrics`` or ``otel`` extra."""
    if names:
        sys.meta_path.insert(0, _Hidden(frozenset(names)))
