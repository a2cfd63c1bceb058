"""A histogram for one process that costs a bisect and two additions per observation, no lock.

``prometheus_client``'s ``Histogram.observe`` takes two locks and walks its buckets in Python: on the
consume path that alone is a tenth of what a message costs. In a single process (the default), the two
duration histograms are these instead, exposed through ``prometheus_client``'s custom-collector API with the
same names, labels and buckets. Handlers and scrapes run on the event loop's thread, so no lock is needed; a
scrape from another thread may see a count one observation ahead of its sum. In ``prometheus_client``'s
multiprocess mode the real ``Histogram`` is used, since its values live in files the workers share.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any


class Tally:
    """The bucket counts and sum of one labelled series."""

    __slots__ = ("_bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        """Count one observation of ``amount``."""
        self.buckets[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class TallyHistogram:
    """A labelled histogram of :class:`Tally` series, registered as a collector (``labels(...).observe(x)``
    as with ``prometheus_client.Histogram``)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._bounds = buckets
        self._series: dict[tuple[str, ...], Tally] = {}

    def labels(self, *values: str) -> Tally:
        """The series of these label values (created at the first call)."""
        tally = self._series.get(values)
        if tally is None:
            tally = self._series[values] = Tally(self._bounds)
        return tally

    def collect(self) -> Iterator[Any]:
        """The histogram as a ``prometheus_client`` metric family (cumulative buckets)."""
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        bounds = [*map(floatToGoString, self._bounds), "+Inf"]
        for values, tally in list(self._series.items()):
            running = 0
            cumulative = []
            for bound, count in zip(bounds, tally.buckets, strict=True):
                running += count
                cumulative.append((bound, running))
            family.add_metric(list(values), cumulative, sum_value=tally.sum)
        yield family

    def describe(self) -> list[Any]:
        """Nothing: the series are only known when collected."""
        return []
