"""The markdown tables ``bench.py`` prints, and the targets of issues #5 and #11 judged from the numbers.

Only what ran is reported (``bench.py --only``): a table per section that has results, and the targets
whose numbers were measured.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from common import NOT_INSTALLED, Sample, ratio, spread
from http_route import HttpSample, ServerConfig
from keyorder import KeyOrderSample, keyorder_table, keyorder_targets
from lifecycle import LifecycleSample
from memory import MemoryResult
from scaleout import ScaleSample
from slow_handler import CONCURRENCY, HANDLER_SLEEP, IDEAL_RATE, SlowSample
from throughput import SCENARIOS

HTTP_IMPLS = ("raw", "raw_depends", "ours", "faststream")
HTTP_LABELS = {
    "raw": "raw (`request.app.state`)",
    "raw_depends": "raw through `Depends` (control)",
    "ours": "ours (`Depends(get_broker)`)",
    "faststream": "faststream (`Depends`)",
}


def p99_ms(sample: Any) -> float:
    """A sample's p99 latency, for :func:`paired`."""
    return float(sample.p99_ms)


NO_GROWTH_MB = 1.0  # RSS growth past the first tenth of the publishes below this is noise, not a leak


Row = tuple[str, str, bool | None]  # target, measured, met (None: not measured)


class Rated(Protocol):
    @property
    def rate(self) -> float: ...

    @property
    def cpu_us(self) -> float: ...


@dataclass
class Results:
    sizes: dict[str, int]
    rounds: int
    faststream: bool
    smoke: bool
    loop: str = "asyncio"  # of the benchmark process
    throughput: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)
    slow: dict[str, list[SlowSample]] = field(default_factory=dict)
    lifecycle: list[LifecycleSample] = field(default_factory=list)
    http: dict[tuple[str, str], list[HttpSample]] = field(default_factory=dict)
    http_configs: list[ServerConfig] = field(default_factory=list)
    http_skipped: list[tuple[str, str]] = field(default_factory=list)  # server config, why
    http_generator: str = ""
    scale: dict[tuple[str, int], list[ScaleSample]] = field(default_factory=dict)  # (handler, processes)
    keyorder: dict[tuple[int, int, bool, int, str], list[KeyOrderSample]] = field(default_factory=dict)  # keyorder.Runs
    drain: MemoryResult | None = None
    publish: MemoryResult | None = None


def median_rate(samples: Sequence[Rated]) -> float:
    return statistics.median(s.rate for s in samples)


def median_cpu(samples: Sequence[Rated]) -> float:
    return statistics.median(s.cpu_us for s in samples)


def per_round(ours: Sequence[Any], other: Sequence[Any], value: Callable[[Any], float]) -> list[float]:
    """``value(ours) / value(other)`` for each round: the two ran back to back in it (interleaved rounds)."""
    return [value(a) / value(b) for a, b in zip(ours, other, strict=True)]


def paired(ours: Sequence[Any], other: Sequence[Any], value: Callable[[Any], float] = lambda s: s.rate) -> float:
    """The median of the per-round ratios. The ratio targets use it: a machine whose speed drifts from one
    round to the next moves both sides of a round together, while a ratio of medians can pair one
    implementation's fast round with the other's slow one."""
    return statistics.median(per_round(ours, other, value))


def paired_cell(ours: Sequence[Any], other: Sequence[Any], value: Callable[[Any], float] = lambda s: s.rate) -> str:
    """``median (min..max)`` of the per-round ratios."""
    return spread(per_round(ours, other, value), ".2f") if other else "-"


def throughput_table(r: Results) -> str:
    """One row per throughput scenario that ran, in ``SCENARIOS`` order."""
    lines = [
        "| scenario | N | rounds | raw msg/s median (min..max) | ours msg/s median (min..max) "
        "| FastStream msg/s median (min..max) | ceiling msg/s median (min..max) | ours/raw | ours/FastStream "
        "| ours/ceiling | raw CPU µs/msg | ours CPU µs/msg | FastStream CPU µs/msg | ceiling CPU µs/msg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sc in SCENARIOS:
        runs = r.throughput.get(sc.key)
        if runs is None:
            continue
        raw, ours = runs["raw"], runs["ours"]
        fs = runs.get("faststream", [])
        if sc.faststream is None:
            fs_cells = ["n/a (no batch publish)", "-", "-"]
        elif not r.faststream:
            fs_cells = [NOT_INSTALLED, NOT_INSTALLED, NOT_INSTALLED]
        else:
            fs_cells = [
                spread([s.rate for s in fs]),
                paired_cell(ours, fs),
                f"{median_cpu(fs):.1f}",
            ]
        ceiling = runs.get("ceiling")
        ceiling_cells = (
            [
                spread([s.rate for s in ceiling]),
                paired_cell(ours, ceiling),
                f"{median_cpu(ceiling):.1f}",
            ]
            if ceiling
            else ["-", "-", "-"]
        )
        lines.append(
            f"| {sc.title} | {r.sizes[sc.key]} | {r.rounds} | {spread([s.rate for s in raw])} "
            f"| {spread([s.rate for s in ours])} | {fs_cells[0]} | {ceiling_cells[0]} "
            f"| {paired_cell(ours, raw)} | {fs_cells[1]} | {ceiling_cells[1]} "
            f"| {median_cpu(raw):.1f} | {median_cpu(ours):.1f} | {fs_cells[2]} | {ceiling_cells[2]} |"
        )
    return "\n".join(lines)


def slow_table(r: Results) -> str:
    lines = [
        f"| {HANDLER_SLEEP * 1e3:.0f} ms handler, concurrency {CONCURRENCY} | N | rounds | msg/s median (min..max) "
        f"| % of {IDEAL_RATE / 1e3:.1f}k | max num_ack_pending seen (all rounds) | polls | CPU µs/msg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {"raw": f"raw: fetch({100}) + {CONCURRENCY}-task semaphore", "ours": "ours: subscribe(concurrency=256)"}
    for impl in ("raw", "ours"):
        samples = r.slow[impl]
        lines.append(
            f"| {labels[impl]} | {r.sizes['slow']} | {r.rounds} | {spread([s.rate for s in samples])} "
            f"| {median_rate(samples) / IDEAL_RATE:.0%} | {max(s.max_ack_pending for s in samples)} "
            f"| {sum(s.polls for s in samples)} | {median_cpu(samples):.1f} |"
        )
    return "\n".join(lines)


def memory_table(r: Results) -> str:
    lines = [
        "| memory (ours, own subprocess) | N | seconds | idle/before RSS MB | RSS after 1st tenth MB "
        "| after RSS MB | peak RSS MB (VmHWM) | peak over idle MB | growth after 1st tenth MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    titles = {"drain": "drain a backlog (batch 100, concurrency 100)", "publish": "publish_many in chunks of 10,000"}
    for m in (r.drain, r.publish):
        if m is None:
            continue
        lines.append(
            f"| {titles[m.kind]} | {m.messages:,} | {m.seconds:.1f} | {m.idle_kb / 1024:.1f} "
            f"| {m.samples_kb[0] / 1024:.1f} | {m.after_kb / 1024:.1f} | {m.peak_kb / 1024:.1f} "
            f"| {m.peak_over_idle_mb:+.1f} | {m.steady_growth_mb:+.1f} |"
        )
    return "\n".join(lines)


def lifecycle_table(r: Results) -> str:
    rows = [
        ("startup, app with 10 consumers", [s.startup for s in r.lifecycle]),
        ("shutdown, same app idle", [s.idle_shutdown for s in r.lifecycle]),
        ("shutdown, 256 handlers in flight (released at shutdown)", [s.busy_shutdown for s in r.lifecycle]),
    ]
    lines = ["| lifespan (ours, asgi-lifespan) | rounds | ms median (min..max) |", "|---|---:|---:|"]
    lines += [f"| {title} | {r.rounds} | {spread([v * 1e3 for v in values], '.1f')} |" for title, values in rows]
    return "\n".join(lines)


def http_table(r: Results) -> str:
    lines = [
        f"README route `POST /orders` (`Depends(get_broker)`), load from {r.http_generator}\n",
        "| server | route | requests (1st burst) | bursts | req/s median (min..max) | vs raw | p50 ms | p99 ms "
        "| p99 vs raw | server CPU µs/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in r.http_configs:
        raw = r.http[config.label, "raw"]
        for impl in HTTP_IMPLS:
            samples = r.http.get((config.label, impl))
            if samples is None:
                lines.append(f"| {config.label} | {impl} | | | {NOT_INSTALLED} | | | | | |")
                continue
            p50 = statistics.median(s.p50_ms for s in samples)
            p99 = statistics.median(s.p99_ms for s in samples)
            lines.append(
                f"| {config.label} | {HTTP_LABELS[impl]} | {samples[0].requests} | {len(samples)} "
                f"| {spread([s.rate for s in samples])} | {paired_cell(samples, raw)} "
                f"| {p50:.1f} | {p99:.1f} | {paired_cell(samples, raw, p99_ms)} "
                f"| {median_cpu(samples):.0f} |"
            )
    lines += [f"| {label} | all | | | {why} | | | | | |" for label, why in r.http_skipped]
    return "\n".join(lines)


def scale_table(r: Results) -> str:
    """Aggregate msg/s by handler and process count, with where the CPU went."""
    cores = os.cpu_count() or 1
    lines = [
        f"| scale-out handler | consumer processes | N | rounds | aggregate msg/s median (min..max) | vs 1 process "
        f"| consumers CPU µs/msg | nats-server CPU µs/msg | cores busy (consumers + server, of {cores}) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (handler, processes), samples in sorted(r.scale.items(), key=lambda item: (item[0][0] != "noop", item[0][1])):
        one = r.scale.get((handler, 1))
        consumers = statistics.median(s.client_cpu / s.seconds for s in samples)
        server = statistics.median(s.server_cpu / s.seconds for s in samples)
        bound = f" (bounded by the {cores} cores)" if processes >= cores else ""
        title = "no-op" if handler == "noop" else "1 ms sleep"
        lines.append(
            f"| {title} | {processes} | {samples[0].messages} | {len(samples)} "
            f"| {spread([s.rate for s in samples])} | {ratio(median_rate(samples), median_rate(one)) if one else '-'} "
            f"| {median_cpu(samples):.1f} | {statistics.median(s.server_us for s in samples):.1f} "
            f"| {consumers + server:.2f} = {consumers:.2f} + {server:.2f}{bound} |"
        )
    return "\n".join(lines)


def throughput_targets(r: Results) -> list[Row]:
    """Targets on the sequential publish, publish_many and consume scenarios, those that ran."""
    rows: list[Row] = []
    t = r.throughput

    def vs(key: str, other: str) -> float:
        return paired(t[key]["ours"], t[key][other])

    if "seq" in t:
        seq = vs("seq", "raw")
        seq_cpu = paired(t["seq"]["ours"], t["seq"]["raw"], lambda s: s.cpu_us)
        rows.append(
            (
                "sequential publish >= 0.97x raw, CPU/msg <= 1.05x",
                f"{seq:.2f}x, CPU {seq_cpu:.2f}x",
                seq >= 0.97 and seq_cpu <= 1.05,
            )
        )
    if "many" in t:
        many = vs("many", "raw")
        rows.append(("publish_many >= 1.5x raw gather", f"{many:.2f}x", many >= 1.5))
    if "consume" in t:
        consume = vs("consume", "raw")
        if r.loop == "asyncio":  # issue #11 keeps this one for asyncio; the ceiling covers both loops
            rows.append(("consume no-op >= 3x raw fetch(100) (on asyncio)", f"{consume:.2f}x", consume >= 3))
        if "ceiling" in t["consume"]:
            vs_ceiling = vs("consume", "ceiling")
            rows.append(("consume no-op >= 0.9x the ceiling", f"{vs_ceiling:.2f}x", vs_ceiling >= 0.9))
        if r.faststream:
            vs_fs = vs("consume", "faststream")
            rows.append(("consume no-op >= 8x FastStream", f"{vs_fs:.2f}x", vs_fs >= 8))
        else:
            rows.append(("consume no-op >= 8x FastStream", NOT_INSTALLED, None))
    return rows


def slow_targets(r: Results) -> list[Row]:
    """Rate and server-side ack pending of the 10 ms handler, if it ran."""
    if not r.slow:
        return []
    slow_rate = median_rate(r.slow["ours"])
    ack_pending = max(s.max_ack_pending for s in r.slow["ours"])
    polled = sum(s.polls for s in r.slow["ours"])
    return [
        (
            f"10 ms handler at {CONCURRENCY} >= 80% of {IDEAL_RATE:,.0f} msg/s",
            f"{slow_rate:,.0f} msg/s ({slow_rate / IDEAL_RATE:.0%})",
            slow_rate >= 0.8 * IDEAL_RATE,
        ),
        (
            f"ack pending never above {CONCURRENCY}",
            f"max {ack_pending} over {polled} polls",
            ack_pending <= CONCURRENCY if polled else None,
        ),
    ]


def http_targets(r: Results) -> list[Row]:
    """One row per server configuration the HTTP route was measured under (none if it did not run)."""
    rows: list[Row] = []
    for config in r.http_configs:
        ours, raw = r.http[config.label, "ours"], r.http[config.label, "raw"]
        rps = paired(ours, raw)
        p99 = paired(ours, raw, p99_ms)
        rows.append(
            (
                f"HTTP publish route ({config.label}) >= 0.97x raw, p99 within 10%",
                f"{rps:.2f}x req/s, p99 {p99:.2f}x",
                rps >= 0.97 and p99 <= 1.10,
            )
        )
    return rows


def memory_targets(r: Results) -> list[Row]:
    """Peak RSS draining a backlog and RSS growth across publishes, for the measurements that ran."""
    rows: list[Row] = []
    if r.drain is not None:
        over = r.drain.peak_over_idle_mb
        rows.append((f"peak RSS draining {r.drain.messages:,} <= 50 MB above idle", f"{over:+.1f} MB", over <= 50))
    if r.publish is not None:
        p = r.publish
        rows.append(
            (
                f"no RSS growth across {p.messages:,} publishes (< {NO_GROWTH_MB:.0f} MB after the 1st tenth)",
                f"{p.steady_growth_mb:+.1f} MB after the 1st tenth ({p.growth_mb:+.1f} MB in all)",
                p.steady_growth_mb < NO_GROWTH_MB,
            )
        )
    return rows


def lifecycle_targets(r: Results) -> list[Row]:
    """Idle shutdown and startup times of the lifespan scenario, if it ran."""
    if not r.lifecycle:
        return []
    idle = statistics.median(s.idle_shutdown for s in r.lifecycle)
    startup = statistics.median(s.startup for s in r.lifecycle)
    return [
        ("idle app shutdown < 0.5 s", f"{idle * 1e3:.0f} ms", idle < 0.5),
        ("app with 10 consumers starts < 0.5 s", f"{startup * 1e3:.0f} ms", startup < 0.5),
    ]


def targets(r: Results) -> str | None:
    """The targets whose numbers were measured, with verdicts; None if no target covers what ran."""
    rows = throughput_targets(r) + slow_targets(r) + http_targets(r) + memory_targets(r) + lifecycle_targets(r)
    rows += keyorder_targets(r.keyorder)
    if not rows:
        return None
    verdict = {True: "met", False: "**unmet**", None: "not measured"}
    header = "| target (issues #5, #11, #15) | measured (medians; a ratio: the median of its per-round ratios) | |"
    lines = [header, "|---|---:|---|"]
    if r.smoke:
        lines.insert(0, "--smoke: one round of tiny sizes; the verdicts below mean nothing.\n")
    lines += [f"| {name} | {measured} | {verdict[ok]} |" for name, measured, ok in rows]
    return "\n".join(lines)


def report(r: Results) -> str:
    """The tables of the sections that ran, in run order, then the targets they cover."""
    ran = [
        (bool(r.throughput), throughput_table),
        (bool(r.slow), slow_table),
        (bool(r.lifecycle), lifecycle_table),
        (bool(r.http_configs), http_table),
        (bool(r.keyorder), lambda r: keyorder_table(r.keyorder, r.sizes["keyorder"], r.rounds)),
        (bool(r.scale), scale_table),
        (r.drain is not None or r.publish is not None, memory_table),
    ]
    sections = [table(r) for did_run, table in ran if did_run]
    goals = targets(r)
    if goals is not None:
        sections.append(goals)
    return "\n\n".join(sections)
