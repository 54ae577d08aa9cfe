"""Online defect-rate estimates per key (utterance, intent, domain, device type).

``DefectRateTracker`` is a river univariate statistic: ``update(defective)`` once per finalised
turn, ``get()`` is the posterior mean of a Beta(1 + defects, 1 + plays - defects) posterior
(uniform prior), ``interval()`` its equal-tailed 95% credible interval.

>>> t = DefectRateTracker()
>>> for defective in (True, False, False, False):
...     t.update(defective)
>>> t.plays, t.defects, round(t.get(), 3)
(4, 1, 0.333)
>>> [round(v, 3) for v in t.interval()]
[0.053, 0.716]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from river import stats as river_stats

# The scalar (Cython) entry point of the same Boost routine as the ``scipy.special.betaincinv``
# ufunc: bit-identical results (tests/test_rates.py checks a grid) at half the cost per call,
# which matters because busy keys miss the cache on every update.
from scipy.special.cython_special import betaincinv

from stream import records
from stream.changes import ChangeSet
from stream.drift import DefectRateDrift
from stream.records import KEY_TYPES, Output, rate_key
from stream.settings import Settings
from stream.stats import EngineStats


def posterior_mean(defects: int, plays: int) -> float:
    """Mean of Beta(1 + defects, 1 + plays - defects)."""
    return (1 + defects) / (2 + plays)


def beta_interval(defects: int, successes: int, level: float = 0.95) -> tuple[float, float]:
    """Equal-tailed credible interval of Beta(1 + defects, 1 + successes)."""
    a, b = 1.0 + defects, 1.0 + successes
    tail = (1.0 - level) / 2.0
    return betaincinv(a, b, tail), betaincinv(a, b, 1.0 - tail)


@lru_cache(maxsize=1 << 16)
def record_estimate(defects: int, successes: int) -> tuple[float, float, float]:
    """(rate, low, high) of a ``defect-rates`` record, rounded to 6 decimals. Cached: most
    keys have few plays, so the same small (defects, successes) pairs recur constantly; the
    rounding is cached too because three ``round`` calls cost about a third of an interval."""
    low, high = beta_interval(defects, successes)
    return (round(posterior_mean(defects, defects + successes), 6), round(low, 6),
            round(high, 6))


class DefectRateTracker(river_stats.base.Univariate):
    """Beta-Bernoulli estimate of P(defect) for one key."""

    __slots__ = ("plays", "defects", "updated_ts")

    def __init__(self, plays: int = 0, defects: int = 0, updated_ts: int = 0) -> None:
        self.plays = plays
        self.defects = defects
        self.updated_ts = updated_ts

    def update(self, x: bool | float, ts: int | None = None) -> None:  # type: ignore[override]
        self.plays += 1
        if x:
            self.defects += 1
        if ts is not None and ts > self.updated_ts:
            self.updated_ts = ts

    def revert(self, x: bool | float) -> None:
        self.plays -= 1
        if x:
            self.defects -= 1

    def get(self) -> float:
        return posterior_mean(self.defects, self.plays)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        return beta_interval(self.defects, self.plays - self.defects, level)


def estimate_output(key_type: str, key: str, tracker: DefectRateTracker) -> Output:
    """The key's ``defect-rates`` record."""
    plays, defects = tracker.plays, tracker.defects
    return records.defect_rate(key_type, key, plays, defects,
                               record_estimate(defects, plays - defects), tracker.updated_ts)


def rank_defective(items: Iterable[tuple[str, DefectRateTracker]], k: int,
                   min_plays: int = 5) -> list[tuple[str, DefectRateTracker]]:
    """Keys with the highest posterior defect rate among those with ``min_plays`` plays."""
    ranked = [(key, t) for key, t in items if t.plays >= min_plays]
    ranked.sort(key=lambda kv: (-kv[1].get(), -kv[1].plays, kv[0]))
    return ranked[:k]


class RateStage:
    """Stage 2: applies ``rate-updates`` (one per finalised turn and key) to the trackers.

    Each key type keeps at most ``settings.max_tracked_keys`` trackers; the least recently
    updated is evicted first (dict order is recency order: updated keys move to the end).
    """

    def __init__(self, settings: Settings | None = None, stats: EngineStats | None = None):
        self.settings = settings or Settings()
        self.stats = stats if stats is not None else EngineStats()
        # OrderedDict: O(1) least-recently-updated eviction (see DeviceStage.devices).
        self.trackers: dict[str, OrderedDict[str, DefectRateTracker]] = {
            k: OrderedDict() for k in KEY_TYPES}
        self.changes = ChangeSet()
        """Keys (``key_type:key``) changed or evicted, for changelog writes (enable to track)."""
        self.drift = DefectRateDrift.from_settings(self.settings, self.stats)

    def apply(self, update: dict[str, Any], estimate: bool = True) -> list[Output]:
        """The new estimate of the update's key, and a drift alert if its rate changed.

        With ``estimate=False`` only the alerts: a caller that publishes one estimate per key
        per batch asks ``estimate`` once per changed key at the end of the batch instead, so
        the credible interval (most of this stage's cost) is not computed for every update.
        """
        key_type, key = update["key_type"], update["key"]
        alerts = self.update(key_type, key, update["defective"], update["ts"])
        if not estimate:
            return alerts
        return [estimate_output(key_type, key, self.trackers[key_type][key]), *alerts]

    def update(self, key_type: str, key: str, defective: bool, ts: int) -> list[Output]:
        """Count one finalised turn for one key; the drift alerts it causes (no estimate)."""
        return self.update_keys(((key_type, key),), defective, ts)

    def update_keys(self, keys: Iterable[tuple[str, str | None]], defective: bool, ts: int,
                    changed: dict[tuple[str, str], None] | None = None) -> list[Output]:
        """Count one finalised turn for each of its (key type, key) pairs (a falsy key: none
        of that type); the drift alerts they cause, in key order. ``changed`` gets each
        pair, for a caller that estimates the changed keys later. One call per turn, not one
        per key: this runs for every finalised turn."""
        alerts: list[Output] = []
        trackers, changes, drift = self.trackers, self.changes, self.drift
        for key_type, key in keys:
            if not key:
                continue
            if changed is not None:
                changed[(key_type, key)] = None
            table = trackers[key_type]
            tracker = table.get(key)
            if tracker is None:
                if len(table) >= self.settings.max_tracked_keys:
                    evicted, _ = table.popitem(last=False)
                    changes.drop(rate_key(key_type, evicted))
                    self.stats.evictions["estimator"] += 1
                tracker = table[key] = DefectRateTracker()
            else:
                table.move_to_end(key)
            # DefectRateTracker.update inlined
            tracker.plays += 1
            if defective:
                tracker.defects += 1
            if ts > tracker.updated_ts:
                tracker.updated_ts = ts
            if changes.enabled:
                changes.touch(rate_key(key_type, key))
            found = drift.update(key_type, key, bool(defective), ts)
            if found:
                alerts += found
        return alerts

    def estimate(self, key_type: str, key: str) -> Output | None:
        """The key's current ``defect-rates`` record (None when it is not tracked)."""
        tracker = self.trackers[key_type].get(key)
        if tracker is None:
            return None
        return estimate_output(key_type, key, tracker)

    @staticmethod
    def record(key_type: str, key: str, tracker: DefectRateTracker) -> dict[str, Any]:
        """The ``defect-rates`` record of a tracker (the views answer with it)."""
        return estimate_output(key_type, key, tracker).record

    def get(self, key_type: str, key: str) -> DefectRateTracker | None:
        return self.trackers[key_type].get(key)

    def top_defective(self, k: int, key_type: str = "utterance",
                      min_plays: int = 5) -> list[tuple[str, DefectRateTracker]]:
        return rank_defective(self.trackers[key_type].items(), k, min_plays)

    # -- state for changelog-backed tables -------------------------------------------------------
    # Same vocabulary as DeviceStage and PersonalRewriteMiner: snapshot(key) / restore(key,
    # data) / take_changes(). A rate row stays the compact [plays, defects, updated_ts].
    def snapshot(self, rkey: str) -> list[int] | None:
        key_type, _, key = rkey.partition(":")
        tracker = self.trackers[key_type].get(key)
        return None if tracker is None else [tracker.plays, tracker.defects, tracker.updated_ts]

    def restore(self, rkey: str, data: list[int]) -> None:
        key_type, _, key = rkey.partition(":")
        self.trackers[key_type][key] = DefectRateTracker(*data)

    def take_changes(self) -> tuple[set[str], set[str]]:
        """(changed keys, evicted keys) since the last call, as ``key_type:key`` strings."""
        return self.changes.take()
