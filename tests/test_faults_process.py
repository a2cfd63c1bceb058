"""Fault injection on the consumer side (issue #3): a consumer process SIGKILLed while it holds unacked
messages (b), poison messages mixed with good ones (d), and a rolling restart of a FastAPI app under
uvicorn (SIGTERM while handlers run, item 5).

Each test counts what it published, what the server acknowledged, what the handlers processed, how many
deliveries were duplicates and how many acknowledged messages were never processed (lost), prints those
counts (run with ``-s``) and asserts lost == 0. The consumer processes are ``tests/fault_consumer.py``; the
test reads what their handlers print, line by line, and waits on that output (or on its own counters),
each wait with a timeout; nothing sleeps to wait for work. The server is the session's nats-server on
127.0.0.1; each test uses subjects of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nats.js.manager import JetStreamManager

from jetstream_fastapi import JetStreamBroker, Message
from jetstream_fastapi.server import NatsServer
from tests.conftest import FAST_BACKOFF, WAIT
from tests.fault_consumer import (
    HOLD_ACK_WAIT,
    HOLD_CONCURRENCY,
    ROLLING_CONCURRENCY,
    ROLLING_SHUTDOWN_TIMEOUT,
)

SCRIPT = Path(__file__).with_name("fault_consumer.py")
ROOT = SCRIPT.parent.parent
BrokerMaker = Callable[..., JetStreamBroker]


# -- a consumer process and what it prints -----------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One line a handler printed: ``<kind> <id> <attempt> <seq>``, and when the test read it."""

    kind: str
    id: str
    attempt: int
    seq: int
    at: float


class Child:
    """A ``fault_consumer.py`` subprocess; its output (stdout and stderr) is read line by line and awaitable."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.lines: list[str] = []
        self.events: list[Event] = []
        self.eof = False
        self._changed = asyncio.Condition()
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, name: str, *args: str, env: dict[str, str] | None = None) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            *args,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process, name)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            words = line.split()
            if len(words) == 4 and words[0] in ("HOLD", "START", "DONE"):
                self.events.append(Event(words[0], words[1], int(words[2]), int(words[3]), time.monotonic()))
            async with self._changed:
                self._changed.notify_all()
        async with self._changed:
            self.eof = True
            self._changed.notify_all()

    def of(self, kind: str) -> list[Event]:
        return [event for event in self.events if event.kind == kind]

    def ids(self, kind: str) -> set[str]:
        return {event.id for event in self.of(kind)}

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``predicate()`` holds, re-checked on every line; fail early if the process ends."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: predicate() or self.eof), timeout)
        if not predicate():
            raise AssertionError(f"{self.name}: {what} not reached within {timeout}s; its output:\n{self.output()}")

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    async def stop(self) -> None:
        """Cleanup: kill the process if it still runs, and finish reading its output."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self.reader


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Counts:
    """Deliveries seen by handlers in the test process, awaitable on any change."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Condition()

    async def add(self, kind: str, msg: Message) -> None:
        assert msg.delivery is not None
        self.events.append(
            Event(kind, msg.body.decode(), msg.delivery.attempt, msg.delivery.sequence, time.monotonic())
        )
        async with self._changed:
            self._changed.notify_all()

    def ids(self, kind: str) -> set[str]:
        return {event.id for event in self.events if event.kind == kind}

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                raise AssertionError(f"{what} not reached within {timeout}s ({len(self.events)} deliveries)") from None


def summary(name: str, published: int, acked: int, processed: int, duplicates: int, lost: int, extra: str) -> None:
    print(
        f"\n[{name}] published={published} acked={acked} processed={processed} "
        f"duplicates={duplicates} lost={lost}; {extra}"
    )


# -- b: a consumer process SIGKILLed while it holds unacked messages ---------------------------------


async def test_killed_consumer_process_messages_come_back_after_the_ack_wait(
    nats_server: NatsServer, brokers: BrokerMaker, prefix: str
) -> None:
    subject = f"{prefix}.jobs"
    ids = [f"b-{number}" for number in range(100)]
    broker = brokers(ack_wait=HOLD_ACK_WAIT)
    await broker.connect()
    acks = await broker.publish_many((subject, msg_id) for msg_id in ids)
    assert len(acks) == len(ids) and not any(ack.duplicate for ack in acks)

    victim = await Child.start("b: consumer process", "hold", nats_server.url, subject)
    try:
        await victim.until(lambda: len(victim.of("HOLD")) >= HOLD_CONCURRENCY, 10, "holding its messages")
        victim.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert await asyncio.wait_for(victim.process.wait(), WAIT) == -signal.SIGKILL
    finally:
        await victim.stop()
    held = victim.of("HOLD")
    held_ids = {event.id for event in held}
    # The worker pulls only as many messages as it has free handler slots: it held exactly those.
    assert len(held) == len(held_ids) == HOLD_CONCURRENCY, victim.output()
    assert all(event.attempt == 1 for event in held)

    # The survivor: same queue (durable consumer), same ack wait, in this process.
    counts = Counts()

    async def survivor(msg: Message) -> None:
        await counts.add("DONE", msg)

    await broker.subscribe(subject, survivor, queue="shared", concurrency=10)
    await counts.until(lambda: counts.ids("DONE") >= set(ids), HOLD_ACK_WAIT + 8, "every message processed")
    await broker.wait_until_idle(WAIT)

    done = counts.events
    per_id = Counter(event.id for event in done)
    lost = set(ids) - set(per_id)
    redelivered = {event.id: event for event in done if event.id in held_ids}
    rest = [event for event in done if event.id not in held_ids]
    came_back_after = [event.at - killed_at for event in redelivered.values()]
    held_for = [redelivered[event.id].at - event.at for event in held]
    # Deliveries across both processes beyond the first of each message: the held ones were delivered twice.
    duplicates = len(held) + len(done) - len(held_ids | set(per_id))
    summary(
        "b: consumer process SIGKILLed holding unacked messages",
        len(ids),
        len(acks),
        len(per_id),
        duplicates,
        len(lost),
        f"held by the killed process={len(held)}, redelivered to the survivor {min(came_back_after):.2f}-"
        f"{max(came_back_after):.2f}s after the kill ({min(held_for):.2f}-{max(held_for):.2f}s after the first "
        f"delivery, ack_wait={HOLD_ACK_WAIT:g}s) with attempt {sorted({e.attempt for e in redelivered.values()})}; "
        f"the other {len(rest)} processed at once with attempt {sorted({e.attempt for e in rest})}",
    )
    assert not lost
    assert all(count == 1 for count in per_id.values()), "the survivor processed a message twice"
    assert set(redelivered) == held_ids
    assert all(event.attempt >= 2 for event in redelivered.values())
    assert all(event.attempt == 1 for event in rest), "only the held messages may come back"
    # Not before the ack wait (measured from when the test read the HOLD line, after the delivery), and
    # well before the test's own bound.
    assert min(held_for) >= HOLD_ACK_WAIT - 1.0
    assert max(came_back_after) < HOLD_ACK_WAIT + 3


# -- d: poison messages mixed with good ones ---------------------------------------------------------


async def test_poison_mixed_with_good_is_dead_lettered_and_stalls_nothing(brokers: BrokerMaker, prefix: str) -> None:
    subject = f"{prefix}.mixed"
    broker = brokers(max_deliver=3, concurrency=1, backoff=FAST_BACKOFF)  # nak delays 0.02, 0.04 s
    await broker.connect()
    # 40 messages, every 4th poison (10), interleaved from the start: g-0, p-1, g-2, g-3, g-4, p-5, ...
    names = [f"{'p' if number % 4 == 1 else 'g'}-{number}" for number in range(40)]
    poison = {name for name in names if name.startswith("p-")}
    good = [name for name in names if name.startswith("g-")]
    acks = await broker.publish_many((subject, name) for name in names)
    seq_of = {name: ack.seq for name, ack in zip(names, acks, strict=True)}
    assert sorted(seq_of.values()) == [seq_of[name] for name in names]  # stored in publish order

    counts = Counts()
    running = 0
    most_running = 0

    async def handler(msg: Message) -> None:
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        try:
            if msg.body.startswith(b"p-"):
                await counts.add("FAIL", msg)
                raise ValueError(f"poison {msg.body.decode()}")
            await counts.add("DONE", msg)
        finally:
            running -= 1

    started = time.monotonic()
    await broker.subscribe(subject, handler, queue="mixed")
    await counts.until(lambda: counts.ids("DONE") >= set(good), 10, "every good message processed")
    good_done_after = max(e.at for e in counts.events if e.kind == "DONE") - started
    await broker.wait_until_idle(10)
    idle_after = time.monotonic() - started

    letters = [letter for letter in await broker.list_dead_letters(10_000) if letter.subject == subject]
    done = [event for event in counts.events if event.kind == "DONE"]
    fails = [event for event in counts.events if event.kind == "FAIL"]
    attempts_of = Counter(event.id for event in fails)
    # A poison message waiting for its redelivery (between its first and its last attempt) did not hold
    # the good ones behind it: count good messages processed in such a window.
    windows = {
        name: (min(e.at for e in fails if e.id == name), max(e.at for e in fails if e.id == name)) for name in poison
    }
    overtook = sum(1 for event in done if any(first < event.at < last for first, last in windows.values()))
    lost = set(names) - {event.id for event in done} - {letter.body.decode() for letter in letters}
    summary(
        "d: poison mixed with good, concurrency=1, max_deliver=3",
        len(names),
        len(acks),
        len(done),
        len(done) - len({event.id for event in done}),
        len(lost),
        f"good={len(good)} poison={len(poison)} dead-lettered={len(letters)} with attempts "
        f"{sorted({letter.attempts for letter in letters})}; {overtook} good messages were processed while a "
        f"poison message waited for its redelivery; all good done after {good_done_after:.2f}s, idle after "
        f"{idle_after:.2f}s",
    )
    assert not lost
    assert most_running == 1
    # Good messages: once each, first attempt, in the order they arrived (increasing stream sequence).
    assert [event.id for event in done] == good
    assert [event.seq for event in done] == sorted(seq_of[name] for name in good)
    assert all(event.attempt == 1 for event in done)
    # Poison: three attempts each, then one dead letter each with attempts == 3.
    assert attempts_of == dict.fromkeys(poison, 3)
    assert sorted(letter.body.decode() for letter in letters) == sorted(poison)
    assert all(
        (letter.attempts, letter.error_type, letter.consumer) == (3, "ValueError", "mixed") for letter in letters
    )
    assert {letter.sequence for letter in letters} == {seq_of[name] for name in poison}
    assert overtook > 0, "good messages waited behind a poison message's redeliveries"


# -- rolling restart: SIGTERM to a busy app under uvicorn, a second instance takes over -------------------


async def test_rolling_restart_finishes_in_flight_and_gives_back_the_rest_at_once(
    nats_server: NatsServer, brokers: BrokerMaker, admin: JetStreamManager, prefix: str
) -> None:
    subject = f"{prefix}.rolling"
    ids = [f"r-{number}" for number in range(200)]
    broker = brokers()
    await broker.connect()
    acks = await broker.publish_many((subject, msg_id) for msg_id in ids)
    stream = acks[0].stream
    env = {"NATS_URL": nats_server.url, "SUBJECT": subject}

    first = await Child.start("first instance", "app", env={**env, "PORT": str(free_port())})
    second: Child | None = None
    try:
        # Handlers run in waves of 8: SIGTERM right after a wave started, with its 8 handlers sleeping.
        await first.until(
            lambda: (
                len(first.of("DONE")) >= 2 * ROLLING_CONCURRENCY
                and len(first.ids("START") - first.ids("DONE")) == ROLLING_CONCURRENCY
            ),
            15,
            "busy processing",
        )
        first.process.send_signal(signal.SIGTERM)
        terminated_at = time.monotonic()
        in_flight_at_term = first.ids("START") - first.ids("DONE")
        returncode = await asyncio.wait_for(first.process.wait(), ROLLING_SHUTDOWN_TIMEOUT + 2)
        exit_took = time.monotonic() - terminated_at
        await first.reader
        info = await admin.consumer_info(stream, "rolling")
        ack_pending_after_exit, pending_after_exit = info.num_ack_pending, info.num_pending

        second = await Child.start("second instance", "app", env={**env, "PORT": str(free_port())})
        second_started = time.monotonic()
        done_by_first = first.ids("DONE")
        await second.until(lambda: (done_by_first | second.ids("DONE")) >= set(ids), 15, "every message processed")
        all_done_after = time.monotonic() - second_started
        first_done_after = min(e.at for e in second.of("DONE")) - second_started
        second.process.send_signal(signal.SIGTERM)
        second_returncode = await asyncio.wait_for(second.process.wait(), ROLLING_SHUTDOWN_TIMEOUT + 2)
        await second.reader
    finally:
        await first.stop()
        if second is not None:
            await second.stop()

    started_by_first = first.ids("START")
    given_back = {event.id for event in second.of("START") if event.attempt > 1}
    # When the second instance started each given-back message, counted from its first handler start.
    second_first_start = min(event.at for event in second.of("START"))
    given_back_after = [event.at - second_first_start for event in second.of("START") if event.attempt > 1]
    processed = Counter(event.id for event in first.of("DONE") + second.of("DONE"))
    lost = set(ids) - set(processed)
    duplicates = sum(processed.values()) - len(processed)
    summary(
        "rolling restart: SIGTERM to a busy uvicorn app, then a second instance",
        len(ids),
        len(acks),
        len(processed),
        duplicates,
        len(lost),
        f"first instance: {len(done_by_first)} processed, {len(in_flight_at_term)} in flight at SIGTERM, exit "
        f"status {returncode} after {exit_took:.2f}s (shutdown_timeout={ROLLING_SHUTDOWN_TIMEOUT:g}s); right after "
        f"its exit the consumer had num_ack_pending={ack_pending_after_exit} num_pending={pending_after_exit}; "
        f"second instance: {len(given_back)} given-back messages redelivered (attempt 2), started "
        f"{max(given_back_after, default=0.0):.2f}s at most after its first handler; first message done "
        f"{first_done_after:.2f}s after its start, all {len(ids) - len(done_by_first)} done after "
        f"{all_done_after:.2f}s (ack_wait=30s)",
    )
    assert returncode == 0, first.output()
    assert second_returncode == 0, second.output()
    assert "Application shutdown complete" in "\n".join(first.lines)
    assert exit_took < ROLLING_SHUTDOWN_TIMEOUT + 2
    # Handlers in flight at SIGTERM finished and were acked: everything the first instance started, it
    # finished, and none of it was delivered again.
    assert in_flight_at_term, "SIGTERM should have come while handlers were running"
    assert started_by_first == done_by_first, first.output()
    assert not (started_by_first & second.ids("START")), "a message handled by the first instance came back"
    # Pulled-but-unstarted messages were given back (nak), not left to the ack wait: whatever the server
    # still counted as unacked after the exit was redelivered to the second instance at once.
    assert given_back.isdisjoint(started_by_first)
    assert ack_pending_after_exit == len(given_back)
    # ... and the server hands them out before new messages: the second instance's first waves.
    assert max(given_back_after, default=0.0) < 1.0
    assert all_done_after < 15  # far below ack_wait=30s: nothing waited for an ack timeout
    assert not lost
    assert duplicates == 0
