"""Hostile input through the dead-letter and replay paths (issue 22, cases 2, 3 and 4), and the interaction
matrix: each of the library's features (TTL, delayed delivery, recurring schedules, atomic batches,
expected-* headers, key order, exclusive consumers) through dead-lettering and replay.

After each case the invariants hold: the poison message ends as a dead letter (or visibly lost, counted),
the consumer advances past it, and a replay re-runs only the consumer that dead-lettered it; no stream the
app does not own is touched. Forged input comes from a second client (raw nats-py) on the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, StreamConfig
from nats.js.manager import JetStreamManager

from jetstream_fastapi import (
    DeadLetterReplayError,
    InMemoryBroker,
    JetStreamBroker,
    Message,
    NoStreamError,
    Reject,
)
from jetstream_fastapi.clock import ManualClock
from jetstream_fastapi.core.deadletters import DEAD_LETTER_STREAM, REPLAY_CONSUMER
from jetstream_fastapi.integration.health import check_readiness
from jetstream_fastapi.server import NatsServer
from tests.conftest import FAST_BACKOFF, WAIT, BrokerFactory, eventually

Broker = Any


class Handlers:
    """Two handlers on one subject: ``picky`` rejects poison until ``fixed``, ``easy`` takes everything.
    Every run is counted by (handler, body); a test waits on the counts, never sleeps."""

    def __init__(self) -> None:
        self.runs: Counter[tuple[str, bytes]] = Counter()
        self.fixed = False
        self._changed = asyncio.Condition()

    async def _seen(self, name: str, msg: Message) -> None:
        async with self._changed:
            self.runs[(name, msg.body)] += 1
            self._changed.notify_all()

    async def picky(self, msg: Message) -> None:
        await self._seen("picky", msg)
        if msg.body.startswith(b"poison") and not self.fixed:
            raise Reject("poison")

    async def easy(self, msg: Message) -> None:
        await self._seen("easy", msg)

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                raise AssertionError(f"{what} not reached within {timeout}s: {dict(self.runs)}") from None


async def letters_of(broker: Broker, stream: str | None = None, consumer: str = "", timeout: float = WAIT) -> list[Any]:
    """The dead letters of ``stream`` whose consumer's name starts with ``consumer``, once there is one
    (the server is shared with other tests: never all of its letters)."""
    found: list[Any] = []

    async def some() -> None:
        letters = await broker.list_dead_letters(1000, stream=stream)
        found[:] = [d for d in letters if d.consumer.startswith(consumer)]
        assert found, f"no dead letter of {consumer or 'any consumer'} in {stream}"

    await eventually(some, timeout)
    return found


async def raw_hpub(url: str, subject: str, headers: list[tuple[str, str]], body: bytes) -> None:
    """Publish with raw protocol bytes what nats-py refuses to send (a header name that is not a token)."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        await reader.readline()  # INFO
        block = "NATS/1.0\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
        head = block.encode()
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')
        writer.write(f"HPUB {subject} {len(head)} {len(head) + len(body)}\r\n".encode() + head + body + b"\r\n")
        writer.write(b"PING\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), WAIT)).startswith(b"PONG")
    finally:
        writer.close()


# -- the interaction matrix ---------------------------------------------------------------------------

Publish = Callable[[Broker, str], Awaitable[Any]]


async def _plain(broker: Broker, subject: str) -> None:
    await broker.publish(subject, b"poison")


async def _ttl(broker: Broker, subject: str) -> None:
    await broker.publish(subject, b"poison", ttl=60)


async def _delay(broker: Broker, subject: str) -> None:
    await broker.publish(subject, b"poison", delay=0.2)


async def _batch(broker: Broker, subject: str) -> None:
    await broker.publish_batch([(subject, b"poison"), (subject, b"poison-2")])


async def _expected(broker: Broker, subject: str) -> None:
    stream = await broker._backend.stream_for(subject)
    await broker.publish(subject, b"poison", expected_stream=stream, expected_last_subject_sequence=0)


async def _recurring(broker: Broker, subject: str) -> None:
    await broker.declare_schedule(subject, every=1, message=b"poison")


FEATURES: dict[str, tuple[Publish, dict[str, Any]]] = {
    "plain": (_plain, {}),
    "ttl": (_ttl, {}),
    "delay": (_delay, {}),
    "recurring": (_recurring, {}),
    "batch": (_batch, {}),
    "expected": (_expected, {}),
    "key_order": (_ttl, {"key_order": True, "partitions": 2}),
    "exclusive": (_ttl, {"exclusive": True}),
}


@pytest.mark.parametrize("feature", list(FEATURES))
async def test_feature_through_dead_letter_and_replay(make_broker: BrokerFactory, prefix: str, feature: str) -> None:
    """A poison message made with ``feature`` is dead-lettered by the one queue that rejects it, that queue
    goes on with the next message, and its replay runs again in that queue only."""
    publish, options = FEATURES[feature]
    broker = await make_broker()
    subject = f"{prefix}.orders.k1"
    watched = f"{prefix}.orders.*" if options.get("key_order") else subject
    seen = Handlers()
    picky_options = {"concurrency": 1, **options} if not options.get("key_order") else options
    await broker.subscribe(watched, seen.picky, queue=f"{prefix}-picky", **picky_options)
    await broker.subscribe(watched, seen.easy, queue=f"{prefix}-easy")
    await publish(broker, subject)
    if feature == "recurring":
        await seen.until(lambda: seen.runs[("picky", b"poison")] >= 1, "the first tick")
        await broker.remove_schedule(subject)
    await broker.publish(subject, b"good")
    await seen.until(lambda: seen.runs[("picky", b"good")] == 1, "the picky queue advancing past the poison")
    await seen.until(lambda: seen.runs[("easy", b"good")] == 1, "the easy queue handling the good message")
    letters = await letters_of(broker, consumer=f"{prefix}-picky")
    assert {letter.body for letter in letters} <= {b"poison", b"poison-2"}
    await broker.wait_until_idle(WAIT)
    easy_before = Counter({key: n for key, n in seen.runs.items() if key[0] == "easy"})

    seen.fixed = True
    letter = letters[0]
    runs = seen.runs[("picky", letter.body)]
    ack = await broker.replay_dead_letter(letter.seq)
    assert not ack.duplicate
    await seen.until(lambda: seen.runs[("picky", letter.body)] == runs + 1, "the replay in the picky queue")
    await broker.wait_until_idle(WAIT)
    easy_after = Counter({key: n for key, n in seen.runs.items() if key[0] == "easy"})
    assert easy_after == easy_before, "the replay ran in a queue that had handled the message already"
    assert letter.seq not in [d.seq for d in await broker.list_dead_letters(1000)]


# -- case 2: dead letters that cannot be stored as they are ------------------------------------------


@pytest.fixture
async def raw(nats_server: NatsServer) -> AsyncIterator[NATS]:
    """A second client: publishes what the app never would."""
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"Bad@Name": "x", "Path/Like": "y", "Dlq-Consumer-Spoof": "z"},
        {"Nats-Expected-Stream": "{stream}"},
        {"Nats-TTL": "60s"},
        {"Nats-Expected-Last-Subject-Sequence": "0"},
        {"Dlq-Kept-Nats-Expected-Stream": "x", "nats-expected-stream": "{stream}"},
    ],
    ids=["not-a-token", "expected-stream", "ttl", "expected-subject-seq", "lowercase"],
)
async def test_forged_headers_are_dead_lettered_and_the_consumer_advances(
    brokers: Callable[..., JetStreamBroker],
    nats_server: NatsServer,
    admin: JetStreamManager,
    prefix: str,
    headers: dict[str, str],
) -> None:
    stream = prefix.upper()
    await admin.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.>"], allow_msg_ttl=True))
    broker = brokers()
    await broker.connect()
    seen = Handlers()
    await broker.subscribe(f"{prefix}.in", seen.picky, queue="picky", concurrency=1)
    forged = {name: value.format(stream=stream) for name, value in headers.items()}
    await raw_hpub(nats_server.url, f"{prefix}.in", list(forged.items()), b"poison")
    await broker.publish(f"{prefix}.in", b"good")
    await seen.until(lambda: seen.runs[("picky", b"good")] == 1, "the consumer advancing past the forged message")
    [letter] = await letters_of(broker, stream, "picky")
    assert letter.stream == stream and letter.body == b"poison" and not letter.malformed
    for name, value in forged.items():
        assert letter.headers.get(name) == value  # recorded as sent, under a neutral name or in JSON
    assert broker.connected if hasattr(broker, "connected") else broker.is_connected


async def test_an_oversized_message_is_dead_lettered_truncated(
    brokers: Callable[..., JetStreamBroker], prefix: str
) -> None:
    broker = brokers()
    await broker.connect()
    seen = Handlers()
    await broker.subscribe(f"{prefix}.big", seen.picky, queue="picky", concurrency=1)
    body = b"poison" + b"x" * (broker._backend.max_payload - 400)
    await broker.publish(f"{prefix}.big", body, headers={"Trace": "t" * 200})
    await broker.publish(f"{prefix}.big", b"good")
    await seen.until(lambda: seen.runs[("picky", b"good")] == 1, "the consumer advancing past the big message")
    [letter] = await letters_of(broker, prefix.upper(), "picky")
    assert letter.partial and letter.original_size == len(body)
    assert body.startswith(letter.body) and letter.sequence == 1
    with pytest.raises(DeadLetterReplayError, match="truncated"):
        await broker.replay_dead_letter(letter.seq)


@pytest.fixture
async def own(fresh_server: NatsServer) -> AsyncIterator[tuple[JetStreamBroker, JetStreamManager]]:
    """A broker and a second client's manager on a server of the test's own (the test changes DEAD_LETTERS)."""
    nc = await nats.connect(fresh_server.url)
    broker = JetStreamBroker(fresh_server.url, backoff=FAST_BACKOFF, fetch_wait=1.0)
    await broker.connect()
    try:
        yield broker, nc.jsm()
    finally:
        with contextlib.suppress(Exception):
            await broker.disconnect()
        await nc.close()


async def test_a_permanent_refusal_is_counted_lost_and_the_consumer_advances(
    own: tuple[JetStreamBroker, JetStreamManager], caplog: pytest.LogCaptureFixture
) -> None:
    broker, jsm = own
    seen = Handlers()
    sub = await broker.subscribe("lost.in", seen.picky, queue="picky", concurrency=1)
    config = (await jsm.stream_info(DEAD_LETTER_STREAM)).config
    config.max_msg_size = 64  # an operator's limit no dead letter fits
    await jsm.update_stream(config)
    with caplog.at_level(logging.ERROR, logger="jetstream_fastapi"):
        await broker.publish("lost.in", b"poison")
        await broker.publish("lost.in", b"good")
        await seen.until(lambda: seen.runs[("picky", b"good")] == 1, "the consumer advancing past the lost letter")
    assert sub.counters["dead_letters_lost"] == 1
    assert any("lost" in record.getMessage() for record in caplog.records if record.levelno == logging.ERROR)
    readiness = await check_readiness(broker)
    assert readiness.dead_letters_lost == 1 and readiness.consumers[0].dead_letters_lost == 1
    assert readiness.ready  # a lost letter is an alert, not an outage
    await broker.wait_until_idle(WAIT)


# -- case 3: the dead-letter stream deleted, and its limits ------------------------------------------


async def test_a_deleted_dead_letter_stream_is_recreated_with_limits(
    own: tuple[JetStreamBroker, JetStreamManager],
) -> None:
    broker, jsm = own
    seen = Handlers()
    await broker.subscribe("reset.in", seen.picky, queue="picky", concurrency=1)
    config = (await jsm.stream_info(DEAD_LETTER_STREAM)).config
    assert config.max_age == 14 * 24 * 3600 and config.max_bytes == 1024**3
    assert config.discard == DiscardPolicy.OLD
    await jsm.delete_stream(DEAD_LETTER_STREAM)  # an operator resetting it
    await broker.publish("reset.in", b"poison")
    await broker.publish("reset.in", b"good")
    await seen.until(lambda: seen.runs[("picky", b"good")] == 1, "the consumer advancing")
    [letter] = await letters_of(broker, consumer="picky")
    assert letter.body == b"poison"
    names = [info.config.name for info in await jsm.streams_info()]
    assert sorted(names) == ["DEAD_LETTERS", "RESET"], "a dead letter went to a stream of its own"


async def test_dead_letter_limits_are_options(fresh_server: NatsServer) -> None:
    broker = JetStreamBroker(fresh_server.url, dead_letter_max_age=3600, dead_letter_max_bytes=10_000_000)
    await broker.connect()
    try:
        await broker.subscribe("limits.in", Handlers().easy, queue="q")
        nc = await nats.connect(fresh_server.url)
        config = (await nc.jsm().stream_info(DEAD_LETTER_STREAM)).config
        await nc.close()
        assert (config.max_age, config.max_bytes) == (3600, 10_000_000)
    finally:
        await broker.disconnect()


async def test_the_memory_dead_letter_stream_keeps_the_same_limits_on_its_clock(prefix: str) -> None:
    # A flood of poison must not fill memory either: age and bytes, the oldest discarded, as on a server.
    clock = ManualClock()
    broker = InMemoryBroker(clock=clock, dead_letter_max_age=3600, dead_letter_max_bytes=4096, max_deliver=1)
    async with broker:
        await broker.subscribe(f"{prefix}.in", _poison, queue="q")
        await broker.publish(f"{prefix}.in", b"old")
        await broker.wait_until_idle()
        await clock.advance(1800)
        await broker.publish(f"{prefix}.in", b"newer")
        await broker.wait_until_idle()
        assert [d.body for d in await broker.list_dead_letters()] == [b"old", b"newer"]
        await clock.advance(1800)  # the first is an hour old: gone
        assert [d.body for d in await broker.list_dead_letters()] == [b"newer"]
        # Bytes: each letter is about 1 KiB; past 4 KiB the oldest go first, the newest always stays.
        for n in range(8):
            await broker.publish(f"{prefix}.in", b"%d" % n + b"x" * 800)
            await broker.wait_until_idle()
        kept = [d.body[:1] for d in await broker.list_dead_letters()]
        assert kept and len(kept) < 5 and kept == [b"%d" % n for n in range(8 - len(kept), 8)]
        await clock.advance(3600)
        assert await broker.list_dead_letters() == []
        # Recreated (a test deleting it) with the same limits.
        del broker._memory.streams[DEAD_LETTER_STREAM]
        await broker.publish(f"{prefix}.in", b"again")
        await broker.wait_until_idle()
        await clock.advance(3600)
        assert await broker.list_dead_letters() == []


async def _poison(message: Message) -> None:
    raise Reject("poison")


# -- case 4: replay trusts nothing in the letter -----------------------------------------------------


async def _plant(broker: Broker, raw_nc: NATS | None, subject: str, headers: dict[str, str], body: bytes = b"") -> None:
    """Store a forged dead letter: from a second client on a server, through the broker in memory."""
    if raw_nc is None:
        await broker.publish(subject, body, headers=headers)
    else:
        await raw_nc.jetstream().publish(subject, body, headers=headers)


@pytest.fixture
async def second_client(make_broker: BrokerFactory, request: pytest.FixtureRequest) -> AsyncIterator[NATS | None]:
    if make_broker.kind == "memory":  # type: ignore[attr-defined]
        yield None
        return
    server: NatsServer = request.getfixturevalue("nats_server")
    nc = await nats.connect(server.url)
    yield nc
    await nc.close()


def _forged(stream: str, subject: str, consumer: str = "victim-q", **extra: str) -> dict[str, str]:
    return {
        "Dlq-Original-Subject": subject,
        "Dlq-Original-Stream": stream,
        "Dlq-Original-Sequence": "1",
        "Dlq-Consumer": consumer,
        "Dlq-Attempts": "1",
        **extra,
    }


async def test_replay_publishes_only_into_the_letters_own_stream(
    make_broker: BrokerFactory, second_client: NATS | None, prefix: str
) -> None:
    victim = f"V{prefix.upper()}"
    other = f"O{prefix.upper()}"
    broker = await make_broker(
        streams=[
            StreamConfig(name=victim, subjects=[f"{prefix}.victim.>"]),
            StreamConfig(name=other, subjects=[f"{prefix}.other.>"]),
        ]
    )
    await broker.publish(f"{prefix}.victim.a", b"precious")
    await broker.subscribe(f"{prefix}.victim.>", Handlers().easy, queue="victim-q")
    cases = {
        "api": _forged(victim, f"$JS.API.STREAM.DELETE.{victim}"),
        "inbox": _forged(victim, "_INBOX.abc.def"),
        "other stream": _forged(victim, f"{prefix}.other.x"),
        "no stream": _forged("", f"{prefix}.victim.a"),
        "stream gone": _forged("NOSUCHSTREAM", "nosuch.a"),
        "auto-provision": _forged(victim, f"{prefix}new.x"),
        "wildcard": _forged(victim, f"{prefix}.victim.*"),
        "consumer gone": _forged(victim, f"{prefix}.victim.a", consumer="nobody"),
    }
    for index, (case, headers) in enumerate(cases.items()):
        await _plant(broker, second_client, f"deadletter.{victim}.{headers['Dlq-Consumer']}", headers, b"")
        [letter] = [
            d
            for d in await broker.list_dead_letters(1000)
            if d.sequence == 1
            and d.subject == headers["Dlq-Original-Subject"]
            and d.consumer == headers["Dlq-Consumer"]
        ][-1:]
        with pytest.raises((DeadLetterReplayError, NoStreamError)):
            await broker.replay_dead_letter(letter.seq)
        assert (await broker.dead_letter(letter.seq)).seq == letter.seq, f"{case}: the letter was not kept"
        await broker.purge_dead_letters([letter.seq])
        assert index >= 0
    assert await broker._backend.has_stream(victim)
    assert (await broker._backend.read(victim, 1)).body == b"precious"
    assert not await broker._backend.has_stream(f"{prefix}NEW".upper())


async def test_malformed_letters_are_listed_flagged(
    make_broker: BrokerFactory, second_client: NATS | None, prefix: str
) -> None:
    broker = await make_broker()
    seen = Handlers()
    await broker.subscribe(f"{prefix}.in", seen.picky, queue="picky")
    await broker.publish(f"{prefix}.in", b"poison")
    [real] = await letters_of(broker, prefix.upper(), "picky")
    stream = real.stream
    await _plant(
        broker,
        second_client,
        f"deadletter.{stream}.picky",
        _forged(stream, f"{prefix}.in", "picky", **{"Dlq-Attempts": "many"}),
    )
    await _plant(broker, second_client, f"deadletter.{stream}.picky", {"Foo": "bar"})
    await _plant(broker, second_client, f"deadletter.{stream}.picky", _forged("ELSEWHERE", f"{prefix}.in", "picky"))
    letters = await broker.list_dead_letters(1000, stream=stream)
    assert len(letters) == 4
    assert [bool(d.malformed) for d in letters] == [False, True, True, True]
    assert "Dlq-Attempts" in (letters[1].malformed or "")
    for bad in letters[1:]:
        assert bad.as_dict()["malformed"]
        with pytest.raises(DeadLetterReplayError, match="malformed"):
            await broker.replay_dead_letter(bad.seq)
    seen.fixed = True
    await broker.replay_dead_letter(real.seq)
    await seen.until(lambda: seen.runs[("picky", b"poison")] == 2, "the replay")


async def test_a_duplicate_replay_keeps_the_letter(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    seen = Handlers()
    await broker.subscribe(f"{prefix}.in", seen.picky, queue="picky")
    await broker.publish(f"{prefix}.in", b"poison")
    [letter] = await letters_of(broker, prefix.upper(), "picky")
    await broker.wait_until_idle(WAIT)
    # The replay's msg id already taken (within the duplicate window): nothing new is stored.
    await broker.publish(f"{prefix}.in", b"other", msg_id=letter.replay().msg_id)
    ack = await broker.replay_dead_letter(letter.seq)
    assert ack.duplicate
    assert (await broker.dead_letter(letter.seq)).body == b"poison", "a duplicate replay deleted the letter"


async def test_replay_ids_stay_unique_when_the_dead_letter_stream_is_recreated(
    own: tuple[JetStreamBroker, JetStreamManager],
) -> None:
    broker, jsm = own
    seen = Handlers()
    await broker.subscribe("again.in", seen.picky, queue="picky", concurrency=1)
    await broker.publish("again.in", b"poison-1")
    [first] = await letters_of(broker, consumer="picky")
    seen.fixed = True
    assert not (await broker.replay_dead_letter(first.seq)).duplicate
    await seen.until(lambda: seen.runs[("picky", b"poison-1")] == 2, "the first replay")
    seen.fixed = False
    await jsm.delete_stream(DEAD_LETTER_STREAM)
    await broker.publish("again.in", b"poison-2")
    [second] = await letters_of(broker, consumer="picky")
    assert second.seq == first.seq  # sequences restart with the stream
    seen.fixed = True
    ack = await broker.replay_dead_letter(second.seq)
    assert not ack.duplicate, "the second letter's replay was taken for the first one's"
    await seen.until(lambda: seen.runs[("picky", b"poison-2")] == 2, "the second replay")


async def test_a_replay_is_settled_by_other_consumers_without_running_them(
    make_broker: BrokerFactory, prefix: str
) -> None:
    """The order-processor / order-shipper story of the issue, with a wildcard consumer and a plain ephemeral one."""
    broker = await make_broker()
    seen = Handlers()
    await broker.subscribe(f"{prefix}.orders.created", seen.picky, queue="order-shipper")
    await broker.subscribe(f"{prefix}.orders.created", seen.easy, queue="order-processor")
    wide = Handlers()
    await broker.subscribe(f"{prefix}.orders.>", wide.easy)
    await broker.publish(f"{prefix}.orders.created", b"poison-order")
    [letter] = await letters_of(broker, prefix.upper(), "order-shipper")
    await broker.wait_until_idle(WAIT)
    seen.fixed = True
    await broker.replay_dead_letter(letter.seq)
    await seen.until(lambda: seen.runs[("picky", b"poison-order")] == 2, "the shipper's replay")
    await broker.wait_until_idle(WAIT)
    assert seen.runs[("easy", b"poison-order")] == 1, "the processor handled the order a second time"
    assert wide.runs[("easy", b"poison-order")] == 1
    shown = next(s for s in broker.subscriptions if s.queue == "order-processor")
    assert shown.counters["replay_skipped"] == 1
    assert REPLAY_CONSUMER == "Dlq-Replay-Consumer"  # the header other clients' consumers are told to check
