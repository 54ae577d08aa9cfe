"""Defect-rate drift alerts: a river ``ADWIN`` per busy key, fed 1/0 per finalised turn.

``DefectRateDrift.learn_one`` takes the ``rate-updates`` records of stage 1 (``key_type``,
``key``, ``defective``, ``ts``). How an alert is made:

1. **Warm-up**: a key gets a detector only after ``min_plays`` plays (counted in a bounded LRU
   table of ``max_candidates`` counters), so rare keys cost a few bytes, not an ADWIN (~1.6 kB).
2. **Detection**: ``ADWIN.update(x)``; on ``drift_detected`` ADWIN drops the older part of its
   window. ``old_rate`` is the mean of exactly that dropped part, recovered from the window's
   mean and width before and after the update.
3. **Confirmation**: ADWIN cuts at bucket boundaries and detects some plays late, so its kept
   window still mixes in old plays (a jump 0.1 -> 0.6 reads ~0.2-0.4 at detection). The alert
   therefore waits for ``confirm_plays`` further plays; ``new_rate`` is their mean. Detections
   during confirmation are merged into the pending alert. The alert is emitted only if
   ``|new_rate - old_rate| >= min_change`` (which also filters most false alarms).

At most ``max_keys`` detectors are kept (least recently updated evicted, counted in
``evictions`` / ``EngineStats.evictions["drift_detector"]``); an evicted key warms up again.
Deterministic: ADWIN is deterministic and only event time (``ts``) is read.

Output: stream ``defect-rate-alerts``, key ``key_type:key:ts``, fields ``key_type``, ``key``,
``old_rate``, ``new_rate``, ``direction`` (``up`` | ``down``), ``n_old`` (plays behind
``old_rate``), ``n_new`` (``confirm_plays``), ``detected_ts`` and ``ts`` (event time of the
play that completed the confirmation).

>>> import random
>>> rng, d = random.Random(0), DefectRateDrift(min_plays=30)
>>> alerts = [o.record for i in range(3000) for o in d.update(
...     "intent", "PlayMusic", rng.random() < (0.1 if i < 1500 else 0.6), i)]
>>> [(a["direction"], round(a["old_rate"], 1), round(a["new_rate"], 1)) for a in alerts]
[('up', 0.1, 0.6)]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from river.drift import ADWIN

from stream import records
from stream.records import Output
from stream.settings import Settings
from stream.stats import EngineStats


class _Tracked:
    __slots__ = ("adwin", "pending", "n_new", "sum_new")

    def __init__(self, delta: float) -> None:
        self.adwin = ADWIN(delta=delta)
        self.pending: tuple[float, int, int] | None = None
        """(old rate, plays behind it, detection ts) while an alert is being confirmed."""
        self.n_new = 0
        self.sum_new = 0.0


class DefectRateDrift:
    """Per-key change detection on the defect indicator; emits ``defect-rate-alerts``."""

    def __init__(self, min_plays: int = 30, max_keys: int = 10_000,
                 max_candidates: int = 100_000, delta: float = 0.002, confirm_plays: int = 50,
                 min_change: float = 0.1, stats: EngineStats | None = None) -> None:
        if min_plays < 1 or max_keys < 1 or max_candidates < 1 or confirm_plays < 1:
            raise ValueError("min_plays, max_keys, max_candidates, confirm_plays must be >= 1")
        self.min_plays = min_plays
        self.max_keys = max_keys
        self.max_candidates = max_candidates
        self.delta = delta
        self.confirm_plays = confirm_plays
        self.min_change = min_change
        self.stats = stats
        # OrderedDicts: O(1) oldest-entry eviction (a plain dict scans tombstones).
        self.warming: OrderedDict[tuple[str, str], int] = OrderedDict()
        """Plays of keys without a detector yet, least recently updated first."""
        self.tracked: OrderedDict[tuple[str, str], _Tracked] = OrderedDict()
        """Keys with a detector, least recently updated first."""
        self.evictions = 0


    @classmethod
    def from_settings(cls, settings: Settings, stats: EngineStats | None = None) -> DefectRateDrift:
        return cls(min_plays=settings.drift_min_plays, max_keys=settings.drift_max_keys,
                   delta=settings.drift_delta, stats=stats)
    def learn_one(self, update: Mapping[str, Any]) -> list[Output]:
        """Apply one ``rate-updates`` record."""
        return self.update(update["key_type"], update["key"], bool(update["defective"]),
                           int(update["ts"]))

    def update(self, key_type: str, key: str, defective: bool, ts: int) -> list[Output]:
        k = (key_type, key)
        tr = self.tracked.get(k)
        if tr is not None:
            self.tracked.move_to_end(k)
        else:
            plays = self.warming.pop(k, 0) + 1
            if plays < self.min_plays:
                self.warming[k] = plays
                if len(self.warming) > self.max_candidates:
                    self.warming.popitem(last=False)
                return []
            tr = _Tracked(self.delta)
            if len(self.tracked) >= self.max_keys:
                self.tracked.popitem(last=False)
                self.evictions += 1
                if self.stats is not None:
                    self.stats.evictions["drift_detector"] += 1
            self.tracked[k] = tr
        return self._step(k, tr, 1.0 if defective else 0.0, ts)

    def _step(self, k: tuple[str, str], tr: _Tracked, x: float, ts: int) -> list[Output]:
        adwin = tr.adwin
        # The window's sum, not its mean: the mean is only needed on a detection (rare).
        total_before, width_before = adwin.total, adwin.width
        adwin.update(x)
        if adwin.drift_detected and tr.pending is None:
            # ADWIN.estimation's own formula, so old_rate stays exactly what it was.
            mean_before = total_before / width_before if width_before else 0.0
            n_old = width_before + 1 - adwin.width
            old_sum = mean_before * width_before + x - adwin.estimation * adwin.width
            if n_old > 0:
                tr.pending = (old_sum / n_old, int(n_old), ts)
                tr.n_new, tr.sum_new = 0, 0.0
            return []
        if tr.pending is None:
            return []
        tr.n_new += 1
        tr.sum_new += x
        if tr.n_new < self.confirm_plays:
            return []
        (old_rate, n_old, detected_ts), new_rate = tr.pending, tr.sum_new / tr.n_new
        tr.pending = None
        if abs(new_rate - old_rate) < self.min_change:
            return []
        key_type, key = k
        if self.stats is not None:
            self.stats.signals["drift_alert"] += 1
        return [records.defect_rate_alert(key_type, key, old_rate, new_rate, n_old, tr.n_new,
                                          detected_ts, ts)]

    def state_sizes(self) -> dict[str, int]:
        return {"tracked": len(self.tracked), "warming": len(self.warming)}
