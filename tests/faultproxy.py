"""A small TCP fault proxy for tests: clients connect to it on loopback, it forwards to a real nats-server.

Faults, applied to every connection going through it:

* :meth:`FaultProxy.cut` closes every connection at once (both sides), as a reset would;
* :meth:`FaultProxy.blackhole` forwards nothing for a while in either direction (new connections are
  accepted and held too), then delivers what was held, in order, as TCP would after a partition heals
  in time; a client that pings notices the silence and reconnects meanwhile;
* :meth:`FaultProxy.latency` delays every chunk by a fixed time, keeping the order.

:class:`Schedule` draws a seeded sequence of those faults, prints it, and plays it. Pure asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass


class _Pipe:
    """One direction of one connection: read chunks, hold them for the latency or a blackhole, write them."""

    def __init__(self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._proxy = proxy
        self._reader = reader
        self._writer = writer
        self._queue: deque[tuple[float, bytes]] = deque()
        self._more = asyncio.Event()

    async def read(self) -> None:
        while data := await self._reader.read(65536):
            self._queue.append((time.monotonic() + self._proxy.delay, data))
            self._more.set()
        self._queue.append((0.0, b""))  # end of stream
        self._more.set()

    async def write(self) -> None:
        proxy = self._proxy
        while True:
            while not self._queue:
                self._more.clear()
                await self._more.wait()
            due, data = self._queue[0]
            await proxy.flowing.wait()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # a blackhole may have begun meanwhile
            self._queue.popleft()
            if not data:
                self._writer.close()
                return
            self._writer.write(data)
            await self._writer.drain()


class FaultProxy:
    """Listens on ``127.0.0.1:<port>`` and forwards to ``upstream_port``; use ``async with``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.delay = 0.0
        """Seconds each chunk is held before it is forwarded (see :meth:`latency`)."""
        self.flowing = asyncio.Event()
        """Clear while blackholed."""
        self.flowing.set()
        self.connections = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter, asyncio.Task[None]]] = set()

    @property
    def url(self) -> str:
        """The NATS URL of the proxy."""
        return f"nats://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.flowing.set()
        if self._server is not None:
            self._server.close()
        self._close_all()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        await self.flowing.wait()  # a blackhole holds new connections too
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        self.connections += 1
        up, down = _Pipe(self, client_reader, server_writer), _Pipe(self, server_reader, client_writer)
        task = asyncio.ensure_future(asyncio.gather(up.read(), up.write(), down.read(), down.write()))
        link = (client_writer, server_writer, task)
        self._links.add(link)
        with contextlib.suppress(Exception):  # a cut or a reset ends a link: nothing to report
            await task
        self._links.discard(link)
        for writer in (client_writer, server_writer):
            writer.close()

    def cut(self) -> None:
        """Close every connection now."""
        self.cuts += 1
        self._close_all()

    def _close_all(self) -> None:
        for client_writer, server_writer, task in list(self._links):
            for writer in (client_writer, server_writer):
                transport = writer.transport
                transport.abort()
            task.cancel()

    async def blackhole(self, seconds: float) -> None:
        """Forward nothing for ``seconds``, then deliver what was held."""
        self.flowing.clear()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.flowing.set()

    async def latency(self, seconds: float, for_seconds: float) -> None:
        """Hold every chunk ``seconds`` before forwarding it, for ``for_seconds``."""
        self.delay = seconds
        try:
            await asyncio.sleep(for_seconds)
        finally:
            self.delay = 0.0


@dataclass(frozen=True)
class Fault:
    """One fault of a schedule: when (seconds after the start), which, and its parameters."""

    at: float
    kind: str  # "cut", "blackhole" or "latency"
    seconds: float = 0.0
    delay: float = 0.0

    def __str__(self) -> str:
        if self.kind == "cut":
            return f"t={self.at:.2f}s cut"
        if self.kind == "blackhole":
            return f"t={self.at:.2f}s blackhole {self.seconds:.2f}s"
        return f"t={self.at:.2f}s latency {self.delay * 1000:.0f}ms for {self.seconds:.2f}s"


class Schedule:
    """A seeded sequence of faults over ``duration`` seconds, one at a time."""

    def __init__(self, seed: int, *, duration: float, faults: int) -> None:
        rng = random.Random(seed)
        self.seed = seed
        kinds = ["cut", "blackhole", "latency"] * (faults // 3 + 1)
        rng.shuffle(kinds)
        slot = duration / faults
        self.faults: list[Fault] = []
        for index, kind in enumerate(kinds[:faults]):
            at = index * slot + rng.uniform(0.1, 0.3) * slot
            if kind == "cut":
                self.faults.append(Fault(at, kind))
            elif kind == "blackhole":
                # Longer than the clients' stale-connection detection (2 pings): they reconnect meanwhile.
                self.faults.append(Fault(at, kind, seconds=rng.uniform(1.5, 2.5)))
            else:
                self.faults.append(Fault(at, kind, seconds=0.6 * slot, delay=rng.choice((0.02, 0.05, 0.1))))

    def __str__(self) -> str:
        return f"fault schedule (seed {self.seed}): " + "; ".join(map(str, self.faults))

    async def play(self, proxy: FaultProxy) -> None:
        """Apply each fault at its time."""
        start = time.monotonic()
        for fault in self.faults:
            await asyncio.sleep(max(0.0, start + fault.at - time.monotonic()))
            if fault.kind == "cut":
                proxy.cut()
            elif fault.kind == "blackhole":
                await proxy.blackhole(fault.seconds)
            else:
                await proxy.latency(fault.delay, fault.seconds)
