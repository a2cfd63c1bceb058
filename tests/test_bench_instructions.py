"""``bench/instructions.py``'s measured processes still run: what valgrind counts, here without valgrind (under
it a run takes about a minute), on asyncio's loop (uvloop comes with the ``bench`` extra, which the test
setup does not install) against the session's nats-server. Nothing is timed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from jetstream_fastapi.server import NatsServer
from tests.conftest import eventually

ROOT = Path(__file__).resolve().parent.parent


def test_the_measured_process_serves_the_readme_route(nats_server: NatsServer) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "instructions.py"), "--one", "ours", "asyncio", "64", nats_server.url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    # It exits non-zero when any request did not answer 202.
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("consumer", ["ours", "ours:metrics", "ours:otel", "ceiling", "raw"])
async def test_the_measured_process_drains_a_filled_stream(nats_server: NatsServer, consumer: str) -> None:
    stream = f"INSN_TEST_{uuid.uuid4().hex[:8].upper()}"
    nc = await nats.connect(nats_server.url)
    try:
        jsm = nc.jsm()
        await jsm.add_stream(StreamConfig(name=stream, subjects=[stream.lower()]))
        js = nc.jetstream()
        await asyncio.gather(*(js.publish(stream.lower(), b"x" * 256) for _ in range(300)))
        arguments = ["--consume-one", consumer, "asyncio", "300", nats_server.url, stream]
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(ROOT / "bench" / "instructions.py"), *arguments],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr

        async def all_acked() -> None:
            info = await jsm.consumer_info(stream, "bench")
            assert (info.num_pending, info.num_ack_pending) == (0, 0)

        await eventually(all_acked)
        await jsm.delete_stream(stream)
    finally:
        await nc.close()
