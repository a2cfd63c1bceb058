"""Dead-letter admin on both brokers: filters, show, purge (by sequence, by consumer, all), and bad input."""

from __future__ import annotations

import pytest
from nats.js.manager import JetStreamManager

from jetstream_fastapi import DeadLetterNotFoundError, InvalidArgumentError, Message, NoStreamError, Reject
from tests.conftest import BrokerFactory


async def _reject(msg: Message) -> None:
    raise Reject(f"bad {msg.body.decode()}")


async def _dead_letters(broker: object, prefix: str, queues: dict[str, int]) -> str:
    """Publish ``n`` poison messages to each queue's consumer; return the stream name."""
    stream = ""
    for queue, count in queues.items():
        await broker.subscribe(f"{prefix}.{queue}", _reject, queue=f"{prefix}-{queue}")  # type: ignore[attr-defined]
        for index in range(count):
            ack = await broker.publish(f"{prefix}.{queue}", f"{queue}{index}".encode())  # type: ignore[attr-defined]
            stream = ack.stream
    await broker.wait_until_idle()  # type: ignore[attr-defined]
    return stream


async def test_filters_show_and_purge(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    stream = await _dead_letters(broker, prefix, {"a": 3, "b": 2})
    mine = await broker.list_dead_letters(10_000, stream=stream)
    assert sorted(d.body for d in mine) == [b"a0", b"a1", b"a2", b"b0", b"b1"]
    only_b = await broker.list_dead_letters(10_000, stream=stream, consumer=f"{prefix}-b")
    assert sorted(d.body for d in only_b) == [b"b0", b"b1"]

    shown = await broker.dead_letter(only_b[0].seq)
    assert (shown.body, shown.error, shown.consumer) == (only_b[0].body, only_b[0].error, f"{prefix}-b")

    # One missing sequence: nothing is deleted.
    with pytest.raises(DeadLetterNotFoundError):
        await broker.purge_dead_letters([only_b[0].seq, 987_654])
    assert len(await broker.list_dead_letters(10_000, stream=stream)) == 5

    assert await broker.purge_dead_letters([only_b[0].seq]) == 1
    with pytest.raises(DeadLetterNotFoundError):
        await broker.dead_letter(only_b[0].seq)
    assert await broker.purge_dead_letters(stream=stream, consumer=f"{prefix}-a") == 3
    assert [d.body for d in await broker.list_dead_letters(10_000, stream=stream)] == [only_b[1].body]
    assert await broker.purge_dead_letters(stream=stream) == 1
    assert await broker.list_dead_letters(10_000, stream=stream) == []


async def test_bad_input_is_refused(make_broker: BrokerFactory, prefix: str) -> None:
    broker = await make_broker()
    with pytest.raises(InvalidArgumentError, match="seq must be a positive integer, got 0"):
        await broker.purge_dead_letters([0])
    with pytest.raises(InvalidArgumentError, match="not both"):
        await broker.purge_dead_letters([1], consumer="c")
    with pytest.raises(InvalidArgumentError, match="consumer must be a stream or consumer name"):
        await broker.list_dead_letters(consumer="a.b")
    with pytest.raises(DeadLetterNotFoundError, match="987654"):
        await broker.dead_letter(987_654)


async def test_replay_refuses_a_dead_letter_whose_stream_is_gone(
    brokers: object, admin: JetStreamManager, prefix: str
) -> None:
    broker = brokers()  # type: ignore[operator]
    await broker.connect()
    stream = await _dead_letters(broker, prefix, {"gone": 1})
    [letter] = await broker.list_dead_letters(10, stream=stream)
    for sub in broker.subscriptions:
        await sub.unsubscribe()
    await admin.delete_stream(stream)
    with pytest.raises(NoStreamError, match=f"came from stream '{stream}', which no longer exists"):
        await broker.replay_dead_letter(letter.seq)
    assert (await broker.dead_letter(letter.seq)).body == b"gone0"  # kept, nothing published
    with pytest.raises(Exception, match="not found"):
        await admin.stream_info(stream)
    await broker.purge_dead_letters([letter.seq])


async def test_dead_letters_are_listed_a_page_at_a_time(
    make_broker: BrokerFactory, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = await make_broker()
    stream = await _dead_letters(broker, prefix, {"a": 3, "b": 2})
    every = await broker.list_dead_letters(10_000, stream=stream)
    assert len(every) == 5
    reads = 0
    read = broker._backend.read

    async def counted(*args: object, **kwargs: object) -> object:
        nonlocal reads
        reads += 1
        return await read(*args, **kwargs)

    monkeypatch.setattr(broker._backend, "read", counted)
    pages, after = [], None
    while True:
        page = await broker.list_dead_letters(2, stream=stream, after=after)
        pages.append([d.seq for d in page])
        if len(page) < 2:
            break
        after = page[-1].seq
    assert pages == [[d.seq for d in every[:2]], [d.seq for d in every[2:4]], [every[4].seq]]
    assert reads <= 2 + 2 + 2  # at most `limit` letters read per page (the last one finds the end)
    only_a = await broker.list_dead_letters(2, stream=stream, consumer=f"{prefix}-a", after=every[0].seq)
    later_a = [d.seq for d in every[1:] if d.consumer == f"{prefix}-a"]
    assert [d.seq for d in only_a] == later_a[:2]
    assert await broker.list_dead_letters(2, stream=stream, after=every[4].seq) == []
    for bad in (-1, "3", True, 1.5):
        with pytest.raises(InvalidArgumentError, match="after must be"):
            await broker.list_dead_letters(2, after=bad)
