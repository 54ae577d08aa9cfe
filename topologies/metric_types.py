"""Building blocks of ``topologies.metrics``: bounded label values, a weighted histogram
and the top-K collector (kept apart so the metrics module stays about what is measured)."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

PREFIX = "feedback_stream_"
OTHER = "other"
# Utterances are free text; a long one would bloat every scrape and Grafana legend.
MAX_UTTERANCE_LABEL_CHARS = 120


class BoundedLabel:
    """Maps raw values to a bounded label-value set.

    >>> closed = BoundedLabel(known=("a", "b"))
    >>> closed("a"), closed("zzz")
    ('a', 'other')
    >>> open_ = BoundedLabel(cap=2)
    >>> [open_(v) for v in ("x", "y", "z", "x")]
    ['x', 'y', 'other', 'x']
    """

    def __init__(self, known: Iterable[str] | None = None, cap: int = 32) -> None:
        self._known = frozenset(known) if known is not None else None
        self._seen: set[str] = set()
        self._cap = cap
        self._lock = threading.Lock()

    def __call__(self, raw: object) -> str:
        value = str(raw)
        if self._known is not None:
            return value if value in self._known else OTHER
        if value in self._seen:
            return value
        # First come, first served: a flood of junk values later on cannot evict real ones.
        with self._lock:
            if len(self._seen) < self._cap:
                self._seen.add(value)
                return value
        return OTHER


class _WeightedHistogram:
    """A histogram collector whose ``observe`` takes a weight.

    prometheus_client's ``Histogram.observe`` has no weight, and observing a 2,000-event batch
    2,000 times would cost more than processing it; bucket counts here are plain integers
    updated once per call.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self._doc = documentation
        self._bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self._bounds) + 1)  # last slot is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float, weight: int = 1) -> None:
        if weight <= 0:
            return
        slot = bisect.bisect_left(self._bounds, value)  # first bound >= value, i.e. `le`
        with self._lock:
            self._counts[slot] += weight
            self._sum += value * weight

    def observe_many(self, values: Iterable[float]) -> None:
        slots = [(bisect.bisect_left(self._bounds, v), v) for v in values]
        with self._lock:
            for slot, value in slots:
                self._counts[slot] += 1
                self._sum += value

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self._doc)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
            running += count
            buckets.append((floatToGoString(bound), running))
        yield HistogramMetricFamily(self.name, self._doc, buckets=buckets, sum_value=total)


class _TopDefectsCollector:
    """Exports the current top-K as ``{rank, utterance}`` gauges, replaced wholesale.

    A snapshot tuple swapped by reference rather than ``Gauge.clear()`` + K ``set()`` calls:
    a scrape landing between those calls would see a partial (or empty) table.
    """

    RATE = PREFIX + "top_defect_rate"
    PLAYS = PREFIX + "top_defect_plays"

    def __init__(self, top_k: int) -> None:
        self._top_k = top_k
        self._rows: tuple[tuple[str, str, float, int], ...] = ()

    def update(self, items: Sequence[tuple[str, float, int]]) -> None:
        self._rows = tuple(
            (str(rank), str(utterance)[:MAX_UTTERANCE_LABEL_CHARS], float(rate), int(plays))
            for rank, (utterance, rate, plays) in enumerate(items[: self._top_k], start=1)
        )

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        labels = ["rank", "utterance"]
        return (
            GaugeMetricFamily(
                self.RATE,
                "Defect rate of the K most defective utterances; rank 1 is the worst. "
                "Only the current top K series exist.",
                labels=labels,
            ),
            GaugeMetricFamily(
                self.PLAYS,
                "Plays (turns) behind each top_defect_rate entry, same rank and utterance.",
                labels=labels,
            ),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        rate, plays = self._families()
        for rank, utterance, value, count in self._rows:
            rate.add_metric([rank, utterance], value)
            plays.add_metric([rank, utterance], count)
        yield rate
        yield plays
