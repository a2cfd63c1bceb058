"""The broker options: declared once, typed on both brokers, accepted by both brokers."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from jetstream_fastapi import (
    ConsumerOptions,
    InMemoryBroker,
    JetStreamBroker,
    ServerVersionError,
)
from jetstream_fastapi.core.handling import ConsumerSettings
from jetstream_fastapi.core.options import BROKER_OPTIONS, OLD_SPELLINGS, BrokerOptions


async def _handler(_: object) -> None: ...


def test_code_written_for_one_broker_constructs_the_other() -> None:
    options: BrokerOptions = {"connect_timeout": 2.0, "batch_size": 20, "dead_letter": False, "publish_timeout": 3.0}
    for broker in (InMemoryBroker(**options), JetStreamBroker("nats://127.0.0.1:4222", **options)):
        assert broker.defaults.batch_size == 20
        assert broker.defaults.dead_letter is False
        assert broker.publish_timeout == 3.0


def test_the_old_spelling_dead_letters_still_works() -> None:
    assert InMemoryBroker(dead_letters=False).defaults.dead_letter is False  # type: ignore[call-arg]


def test_options_are_declared_once() -> None:
    consumer = set(ConsumerOptions.__annotations__)
    assert consumer <= set(BrokerOptions.__annotations__)  # the broker's options are the consumer's defaults
    assert {field.name for field in dataclasses.fields(ConsumerSettings)} == consumer
    assert OLD_SPELLINGS.keys() <= BROKER_OPTIONS and set(OLD_SPELLINGS.values()) <= consumer


@pytest.mark.parametrize("cls", [InMemoryBroker, JetStreamBroker])
def test_both_brokers_type_their_options(cls: type) -> None:
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    assert hints["options"] == typing.Unpack[BrokerOptions]


async def test_one_server_version_gate_for_exclusive_consumers() -> None:
    async with InMemoryBroker(server_version=(2, 10, 24)) as broker:
        with pytest.raises(ServerVersionError, match=r"exclusive consumers needs nats-server 2\.11\.0 or later"):
            await broker.subscribe("orders.x", _handler, queue="q", exclusive=True)
