"""The testing kit: one test module runs on the in-memory broker and on a real server, unchanged."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jetstream_fastapi import Broker, ConsumerRouter, InMemoryBroker, InvalidArgumentError, ManualClock, Message
from jetstream_fastapi.testing import wait_until_handled

ROOT = Path(__file__).resolve().parent.parent


async def test_the_broker_fixture_runs_on_each_kind(broker: Broker) -> None:
    router = ConsumerRouter()
    seen: list[bytes] = []

    @router.handle("kit.orders", queue="kit")
    async def handle(msg: Message) -> None:
        seen.append(msg.body)

    await broker.connect()
    await router.start(broker)
    await broker.publish("kit.orders", b"one")
    await broker.publish("kit.orders", b"two")
    await wait_until_handled(broker)
    assert sorted(seen) == [b"one", b"two"]


async def test_jetstream_broker_starts_from_an_empty_server(jetstream_broker: Broker) -> None:
    await jetstream_broker.connect()
    ack = await jetstream_broker.publish("kit.orders", b"first")
    assert ack.seq == 1  # a server of its own: nothing of the previous test is there


def _run_pytest(tmp_path: Path, *args: str) -> str:
    test = tmp_path / "test_user.py"
    test.write_text(
        textwrap.dedent(
            """
            from jetstream_fastapi.testing import wait_until_handled

            async def test_publish(broker):
                async with broker:
                    ack = await broker.publish("user.events", b"x")
                    assert ack.seq == 1
                    await wait_until_handled(broker)
            """
        )
    )
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["jetstream_fastapi.testing"]\n')
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    return result.stdout + result.stderr


def test_plugin_recipe_runs_a_user_module_on_both_or_one(tmp_path: Path) -> None:
    assert "2 passed" in _run_pytest(tmp_path)
    assert "1 passed" in _run_pytest(tmp_path, "--broker=memory")
    assert "1 passed" in _run_pytest(tmp_path, "--broker=jetstream")


STRICT_MODE_SUITE = """
import pytest

from jetstream_fastapi import Broker, ConsumerRouter, InMemoryBroker, JetStreamBroker, Message
from jetstream_fastapi.server import NatsServer
from jetstream_fastapi.testing import wait_until_handled

router = ConsumerRouter()
seen: list[bytes] = []


@router.handle("user.orders", queue="user")
async def handle(msg: Message) -> None:
    seen.append(msg.body)


@pytest.mark.asyncio
async def test_broker_runs_on_each_kind(broker: Broker) -> None:
    seen.clear()
    async with broker:
        await router.start(broker)
        await broker.publish("user.orders", b"one")
        await wait_until_handled(broker)
    assert seen == [b"one"]


@pytest.mark.asyncio
async def test_memory_broker(memory_broker: InMemoryBroker) -> None:
    async with memory_broker:
        assert (await memory_broker.publish("user.orders", b"x")).seq == 1


@pytest.mark.asyncio
async def test_jetstream_broker(jetstream_broker: JetStreamBroker, nats_server: NatsServer) -> None:
    assert jetstream_broker.servers != [nats_server.url]  # a server of the test's own
    async with jetstream_broker:
        assert (await jetstream_broker.publish("user.orders", b"x")).seq == 1


def test_nats_server(nats_server: NatsServer) -> None:
    assert nats_server.running
"""


def test_plugin_works_in_pytest_asyncios_default_strict_mode(tmp_path: Path) -> None:
    # A project of its own (its pytest.ini makes tmp_path the rootdir, so this repository's
    # asyncio_mode = auto does not apply): pytest-asyncio's defaults, i.e. strict mode.
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["jetstream_fastapi.testing"]\n')
    (tmp_path / "test_strict.py").write_text(STRICT_MODE_SUITE)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "test_strict.py"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    print(output)
    assert "asyncio: mode=Mode.STRICT" in output
    assert result.returncode == 0, output
    assert "5 passed" in output
    for test in ("test_broker_runs_on_each_kind[memory]", "test_broker_runs_on_each_kind[jetstream]"):
        assert f"{test} PASSED" in output


class TestTheFixtureBrokerOnAManualClock:
    """``broker_clock`` (overridden here) gives the ``memory_broker`` fixture a clock; ``wait_until_handled``
    waits for what is due, and with ``advance=`` moves a manual clock so that delayed messages fall due."""

    @pytest.fixture
    def broker_clock(self) -> ManualClock:
        return ManualClock()

    async def test_a_delayed_message_is_handled_once_the_clock_passes_its_time(
        self, memory_broker: InMemoryBroker
    ) -> None:
        assert isinstance(memory_broker.clock, ManualClock)
        seen: list[bytes] = []

        async def handle(msg: Message) -> None:
            seen.append(msg.body)

        async with memory_broker:
            await memory_broker.subscribe("kit.later", handle, queue="later")
            await memory_broker.publish("kit.later", b"now")
            await memory_broker.publish("kit.later", b"later", delay=30)
            await wait_until_handled(memory_broker)
            assert seen == [b"now"]  # the delayed one is not due: not waited for
            await wait_until_handled(memory_broker, advance=29)
            assert seen == [b"now"]
            await wait_until_handled(memory_broker, advance=1)
            assert seen == [b"now", b"later"]


async def test_advance_needs_a_manual_clock(memory_broker: InMemoryBroker) -> None:
    async with memory_broker:
        with pytest.raises(InvalidArgumentError, match="ManualClock"):
            await wait_until_handled(memory_broker, advance=1)
