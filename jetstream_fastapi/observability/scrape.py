"""The figures read at scrape time, never per message: consumer lag and ack pending from the server (cached
for a second), handlers in flight, reconnects, and whether the broker is up.

A scrape while NATS is down answers with the last figures read and ``jetstream_up 0``, never an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ..driver import Broker, ConsumerState

F = TypeVar("F")
CACHE_SECONDS = 1.0
"""How long consumer states read from the server are reused."""
READ_TIMEOUT = 2.0
"""Longest a scrape waits for the server's consumer states before it answers with the last known ones."""


class _Refreshed:
    """Figures refreshed on their event loop, on demand (:meth:`poke`) or awaited (``refresh``)."""

    _loop: asyncio.AbstractEventLoop | None = None
    _refreshing: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Read the figures again (subclasses)."""
        raise NotImplementedError

    def poke(self) -> None:
        """Refresh soon, on the broker's event loop (callable from any thread: OpenTelemetry's readers
        collect from their own); the figures read now are the last known ones."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._start_refresh)

    def _start_refresh(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self.refresh())

    def bind(self) -> None:
        """Note the running event loop (the broker's) for :meth:`poke`."""
        self._loop = asyncio.get_running_loop()


class BrokerFigures(_Refreshed):
    """The scrape-time figures of one broker (see the module docstring)."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._states: dict[tuple[str, str], ConsumerState] = {}
        self._read_at = -CACHE_SECONDS
        self._up = False
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read the consumer states unless they were read within :data:`CACHE_SECONDS`; on failure keep the
        last ones and mark the broker down. Never raises."""
        async with self._lock:
            if time.monotonic() - self._read_at < CACHE_SECONDS:
                return
            broker = self._broker
            if not broker.is_connected:
                self._up = False
                return
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    states = await broker.consumer_states()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._up = False
                return
            self._states = {(state.stream, state.name): state for state in states}
            self._read_at = time.monotonic()
            self._up = True

    def families(self) -> Iterator[Any]:
        """The figures as ``prometheus_client`` metric families."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["stream", "consumer", "messaging_destination_name", "messaging_consumer_group_name"]
        pending = GaugeMetricFamily(
            "jetstream_consumer_pending_messages",
            "Messages in the stream not yet delivered to the consumer (lag).",
            labels=labels,
        )
        ack_pending = GaugeMetricFamily(
            "jetstream_consumer_ack_pending_messages", "Messages delivered and not yet acknowledged.", labels=labels
        )
        in_flight = GaugeMetricFamily(
            "jetstream_handlers_in_flight", "Handlers running now in this process.", labels=labels
        )
        lost = CounterMetricFamily(
            "jetstream_dead_letters_lost",
            "Messages terminated without a dead letter: the server refused the letter for good.",
            labels=labels,
        )
        for row in self.rows():
            key, state, running = row
            if state is not None:
                pending.add_metric(key, state.pending)
                ack_pending.add_metric(key, state.ack_pending)
            in_flight.add_metric(key, running)
            lost.add_metric(key, self.lost(key[1]))
        reconnects = CounterMetricFamily(
            "jetstream_connection_reconnects", "Times the connection to NATS was re-established."
        )
        reconnects.add_metric([], self._broker.reconnects)
        up = GaugeMetricFamily(
            "jetstream_up", "1 when the broker is connected and the last read of consumer states succeeded."
        )
        up.add_metric([], 1 if self._up and self._broker.is_connected else 0)
        yield from (pending, ack_pending, in_flight, lost, reconnects, up)

    def rows(self) -> Iterator[tuple[list[str], ConsumerState | None, int]]:
        """Per running subscription: its labels, its last known state (or ``None``), its handlers in flight."""
        seen: set[tuple[str, str]] = set()
        for sub in self._broker.subscriptions:
            key = (sub.stream, sub.consumer_name)
            if key in seen:
                continue
            seen.add(key)
            in_flight = sum(other.in_flight for other in self._broker.subscriptions if other.consumer_name == key[1])
            yield [sub.stream, sub.consumer_name, sub.subject, sub.queue or ""], self._states.get(key), in_flight

    def lost(self, consumer: str) -> int:
        """Dead letters lost by this process's subscriptions of ``consumer``."""
        subs = self._broker.subscriptions
        return sum(sub.counters["dead_letters_lost"] for sub in subs if sub.consumer_name == consumer)

    @property
    def up(self) -> bool:
        """Whether the broker is connected and the last refresh found it answering."""
        return self._up and self._broker.is_connected

    @property
    def reconnects(self) -> int:
        """Times the broker's connection came back after a loss."""
        return self._broker.reconnects


class FiguresCollector:
    """A ``prometheus_client`` collector for one broker's :class:`BrokerFigures` or one outbox's
    :class:`OutboxFigures` (in a registry of its own)."""

    def __init__(self, figures: BrokerFigures | OutboxFigures) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Any]:
        """The metric families (called by ``generate_latest``)."""
        yield from self._figures.families()

    def describe(self) -> list[Any]:
        """Nothing: the families vary with the subscriptions (so the registry does not call ``collect``)."""
        return []


# A derived counter: (histogram it counts, counter name, help, the histogram's labels it keeps).
_DERIVED = (
    (
        "messaging_client_operation_duration_seconds",
        "messaging_client_sent_messages",
        "Messages published (error_type set when not stored).",
        ("messaging_destination_name", "error_type"),
    ),
    (
        "messaging_process_duration_seconds",
        "messaging_client_consumed_messages",
        "Messages delivered to a handler (each delivery).",
        ("messaging_destination_name", "messaging_consumer_group_name"),
    ),
)


class WithDerivedCounters:
    """Collects ``registry`` and adds the counters that are the counts of its histograms.

    A published or handled message is counted once, in its duration histogram; the sent and consumed
    counters are read from those counts at scrape time (one instrument update per message instead of two).
    Works on a multiprocess registry too: the counts are already summed over the workers there.
    """

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Any]:
        """The registry's families, each duration histogram followed by its counter."""
        from prometheus_client.core import CounterMetricFamily

        for family in self._registry.collect():
            yield family
            for histogram, name, documentation, labels in _DERIVED:
                if family.name != histogram:
                    continue
                totals: dict[tuple[str, ...], float] = {}
                for sample in family.samples:
                    if sample.name == f"{histogram}_count":
                        key = tuple(sample.labels.get(label, "") for label in labels)
                        totals[key] = totals.get(key, 0.0) + sample.value
                counter = CounterMetricFamily(name, documentation, labels=list(labels))
                for key, value in totals.items():
                    counter.add_metric(list(key), value)
                yield counter

    def describe(self) -> list[Any]:
        """Nothing: the families are only known when collected."""
        return []


def figures_of(broker: Broker) -> BrokerFigures:
    """The broker's :class:`BrokerFigures`, created at the first call and kept on the broker (they live as
    long as it does)."""
    return _attached(broker, BrokerFigures)


def _attached(owner: Any, make: Callable[[Any], F]) -> F:
    """``owner``'s figures, made by ``make(owner)`` at the first call and kept on it."""
    figures: F | None = getattr(owner, "_figures", None)
    if figures is None:
        figures = make(owner)
        with contextlib.suppress(AttributeError):  # an object of one's own with __slots__: figures per scrape
            setattr(owner, "_figures", figures)  # noqa: B010 - the owner's private cache, not in the contract
    return figures


class OutboxFigures(_Refreshed):
    """The scrape-time figures of one outbox (:class:`jetstream_fastapi.outbox.Outbox`): its table read
    with one aggregate query (cached for :data:`CACHE_SECONDS`), and its relay's counters in this process.

    A scrape while the database does not answer keeps the last figures and reports
    ``jetstream_outbox_up 0``. Nothing is counted per message here: the relay counts what it publishes.
    """

    def __init__(self, outbox: Any) -> None:
        self._outbox = outbox
        self._stats: Any = None
        self._read_at = -CACHE_SECONDS
        self._up = False
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read the table unless it was read within :data:`CACHE_SECONDS`; never raises."""
        async with self._lock:
            if time.monotonic() - self._read_at < CACHE_SECONDS:
                return
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    self._stats = await self._outbox.stats()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._up = False
                return
            self._read_at = time.monotonic()
            self._up = True

    @property
    def name(self) -> str:
        """The outbox's table name (the ``outbox`` label)."""
        return str(self._outbox.name)

    @property
    def up(self) -> bool:
        """Whether the last read of the table succeeded."""
        return self._up

    def stats(self) -> Any:
        """The last :class:`~jetstream_fastapi.outbox.OutboxStats` read, or ``None``."""
        return self._stats

    def counts(self) -> tuple[int, int, int] | None:
        """(published, dead-lettered, failed) by this process's running relay, or ``None`` without one."""
        relay = self._outbox.relay
        return None if relay is None else (relay.published, relay.dead_lettered, relay.failed)

    def families(self) -> Iterator[Any]:
        """The figures as ``prometheus_client`` metric families, labelled by the outbox's table name."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        label, name = ["outbox"], [self.name]
        up = GaugeMetricFamily(
            "jetstream_outbox_up", "1 when the last read of the outbox table succeeded.", labels=label
        )
        up.add_metric(name, 1 if self._up else 0)
        yield up
        stats = self._stats
        if stats is not None:
            for metric, documentation, value in (
                ("jetstream_outbox_backlog_messages", "Rows waiting to be published (not failed).", stats.backlog),
                ("jetstream_outbox_oldest_age_seconds", "Age of the oldest waiting row.", stats.oldest_age),
                ("jetstream_outbox_failed_messages", "Rows that wait for an operator (outbox retry).", stats.failed),
            ):
                gauge = GaugeMetricFamily(metric, documentation, labels=label)
                gauge.add_metric(name, value)
                yield gauge
        counts = self.counts()
        if counts is not None:
            for metric, documentation, value in (
                ("jetstream_outbox_published_messages", "Rows stored in their stream by this process's relay.", 0),
                ("jetstream_outbox_dead_letters", "Rows refused for good and dead-lettered by this relay.", 1),
                ("jetstream_outbox_failures", "Rows this relay could not even dead-letter (left failed).", 2),
            ):
                counter = CounterMetricFamily(metric, documentation, labels=label)
                counter.add_metric(name, counts[value])
                yield counter


def outbox_figures_of(outbox: Any) -> OutboxFigures:
    """The outbox's :class:`OutboxFigures`, created at the first call."""
    return _attached(outbox, OutboxFigures)
