"""The contract (``driver.Broker`` and the management protocols it extends) is what both brokers are: the
same members with the same parameters, and every type they return is exported."""

from __future__ import annotations

import collections.abc
import datetime
import inspect
import types
import typing
from typing import Any

import pytest

import jetstream_fastapi
from jetstream_fastapi import InMemoryBroker, JetStreamBroker
from jetstream_fastapi.driver import Broker, ConsumerAdmin, DeadLetterAdmin, ScheduleAdmin

BROKERS = [InMemoryBroker, JetStreamBroker]


def _members(protocol: type) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for cls in reversed(protocol.__mro__):
        if cls is object or not getattr(cls, "_is_protocol", False):
            continue
        members.update({name: value for name, value in vars(cls).items() if not name.startswith("_")})
    return members


def _parameters(function: Any) -> list[tuple[str, Any, Any]]:
    """Name, kind and default of each parameter (annotations may be spelt differently, e.g. a narrower return)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_contract_declares_the_management_plane() -> None:
    members = _members(Broker)
    for plane in (ConsumerAdmin, DeadLetterAdmin, ScheduleAdmin):
        assert issubclass(Broker, plane)
    data = {"connect", "disconnect", "publish", "subscribe", "request", "publish_many", "publish_batch"}
    management = {"consumer_states", "pause", "resume", "list_dead_letters", "dead_letter", "replay_dead_letter"}
    management |= {"purge_dead_letters", "declare_schedule", "declare_schedules", "schedules", "remove_schedule"}
    assert data | management <= set(members)


@pytest.mark.parametrize("cls", BROKERS)
def test_each_broker_has_the_contract_s_signatures(cls: type) -> None:
    for name, declared in _members(Broker).items():
        implemented = inspect.getattr_static(cls, name, None)
        assert implemented is not None, f"{cls.__name__} has no {name}"
        if isinstance(declared, property):
            assert isinstance(implemented, property), name
            continue
        assert inspect.iscoroutinefunction(implemented) == inspect.iscoroutinefunction(declared), name
        assert _parameters(implemented) == _parameters(declared), name


@pytest.mark.parametrize("cls", BROKERS)
async def test_each_broker_is_a_broker(cls: type) -> None:
    broker = cls() if cls is InMemoryBroker else cls("nats://127.0.0.1:1")
    assert isinstance(broker, Broker)


def _classes(hint: Any) -> set[type]:
    found: set[type] = set()
    if isinstance(hint, type) and hint.__module__.startswith("jetstream_fastapi"):
        found.add(hint)
    for arg in typing.get_args(hint):
        found |= _classes(arg)
    return found


@pytest.mark.parametrize("cls", BROKERS)
def test_every_type_a_broker_returns_is_exported(cls: type) -> None:
    names = {name: getattr(jetstream_fastapi, name) for name in jetstream_fastapi.__all__}
    names.update(_dt=datetime, types=types, collections=collections, Any=Any)
    returned: set[type] = set()
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or not callable(member):
            continue
        hints = typing.get_type_hints(member, localns=names)
        returned |= _classes(hints.get("return"))
    assert {"Subscription", "PartitionedSubscription", "ConsumerState", "DeadLetter"} <= {c.__name__ for c in returned}
    missing = sorted(c.__name__ for c in returned if getattr(jetstream_fastapi, c.__name__, None) is not c)
    assert missing == [], f"returned but not exported: {missing}"


def test_one_name_per_subscription_class_and_old_names_still_import() -> None:
    from jetstream_fastapi import InMemorySubscription, JetStreamSubscription, Subscription  # type: ignore[attr-defined]

    assert InMemorySubscription is JetStreamSubscription is Subscription
    assert "Subscription" in jetstream_fastapi.__all__
    assert not {"InMemorySubscription", "JetStreamSubscription"} & set(jetstream_fastapi.__all__)
