"""Pausing a durable consumer on the server (``broker.pause``/``resume``), on both brokers."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from jetstream_fastapi import ConsumerConfigError, InMemoryBroker, InvalidArgumentError, ServerVersionError
from jetstream_fastapi.clock import ManualClock
from jetstream_fastapi.integration.health import check_readiness
from tests.conftest import BrokerFactory, eventually
from tests.test_contract import Recorder


def _soon(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


async def _state(broker: Any, queue: str) -> Any:
    [state] = [s for s in await broker.consumer_states() if s.name == queue]
    return state


async def test_a_paused_consumer_gets_nothing_until_resumed(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    queue = f"{prefix}-reports"
    recorder = Recorder()
    await broker.subscribe(f"{prefix}.reports", recorder, queue=queue)
    await broker.pause(queue, until=_soon(3600))
    await broker.publish(f"{prefix}.reports", b"r1")

    async def held() -> None:
        state = await _state(broker, queue)
        assert state.paused and state.paused_until is not None and state.pending == 1

    await eventually(held)
    readiness = await check_readiness(broker)
    assert readiness.ready  # paused on purpose, still ready
    [consumer] = readiness.consumers
    assert consumer.paused_until is not None and consumer.paused_until > dt.datetime.now(dt.UTC)
    assert recorder.messages == []
    await broker.resume(queue)
    await recorder.wait_for(1)
    assert recorder.bodies == [b"r1"]
    assert not (await _state(broker, queue)).paused
    assert (await check_readiness(broker)).consumers[0].paused_until is None


async def test_a_pause_ends_by_itself_at_its_time(make_broker: BrokerFactory, prefix: str) -> None:
    clock = ManualClock() if make_broker.kind == "memory" else None  # type: ignore[attr-defined]
    broker = await make_broker(**({"clock": clock} if clock is not None else {}))
    queue = f"{prefix}-nightly"
    recorder = Recorder()
    await broker.subscribe(f"{prefix}.nightly", recorder, queue=queue)
    await broker.pause(queue, until=_soon(30 if clock is not None else 1.0))
    await broker.publish(f"{prefix}.nightly", b"n1")
    if clock is not None:
        await clock.advance(29)
        assert (await _state(broker, queue)).pending == 1 and recorder.messages == []
        await clock.advance(2)
    await recorder.wait_for(1, timeout=10.0)
    assert recorder.bodies == [b"n1"]


async def test_bad_pauses_are_refused(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    queue = f"{prefix}-q"
    await broker.subscribe(f"{prefix}.a", Recorder(), queue=queue)
    for until in (dt.datetime(2099, 1, 1), _soon(-1), "tomorrow", None):
        with pytest.raises(InvalidArgumentError, match="until"):
            await broker.pause(queue, until=until)
    with pytest.raises(InvalidArgumentError, match="no subscription"):
        await broker.pause(f"{prefix}-other", until=_soon(60))
    with pytest.raises(InvalidArgumentError):
        await broker.pause("bad.queue", until=_soon(60))
    stream = broker.subscriptions[0].stream
    with pytest.raises(ConsumerConfigError, match="no consumer"):
        await broker.pause(f"{prefix}-other", until=_soon(60), stream=stream)
    assert not (await _state(broker, queue)).paused


async def test_a_server_too_old_for_pause_says_the_feature_and_version(prefix: str) -> None:
    async with InMemoryBroker(server_version=(2, 10, 0)) as broker:
        await broker.subscribe(f"{prefix}.a", Recorder(), queue="q")
        with pytest.raises(ServerVersionError, match=r"consumer pause needs nats-server 2\.11\.0"):
            await broker.pause("q", until=_soon(60))


async def test_a_pause_holds_every_instance_of_the_queue(brokers: Any, prefix: str) -> None:
    """Two app instances share a queue; one pauses it: the server holds the message from both."""
    first, second = brokers(), brokers()
    queue = f"{prefix}-shared"
    got_first, got_second = Recorder(), Recorder()
    async with first, second:
        await first.subscribe(f"{prefix}.jobs", got_first, queue=queue)
        await second.subscribe(f"{prefix}.jobs", got_second, queue=queue)
        await first.pause(queue, until=_soon(3600))
        await first.publish(f"{prefix}.jobs", b"j1")

        async def held() -> None:
            state = await _state(second, queue)  # the other instance sees the pause too
            assert state.paused and state.pending == 1

        await eventually(held)
        assert got_first.messages == [] and got_second.messages == []
        await second.resume(queue)

        async def handled() -> None:
            assert len(got_first.messages) + len(got_second.messages) == 1

        await eventually(handled)
