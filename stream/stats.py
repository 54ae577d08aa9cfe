"""Counters the engine keeps about itself; the metrics layer exports them (no Prometheus here).

Counters only grow; gauges are read at export time. Keys are small bounded sets (event types,
dead-letter reason codes, signal kinds, failure points), so exporting them as labels is safe.
"""

from __future__ import annotations

import dataclasses
from collections import Counter


@dataclasses.dataclass
class EngineStats:
    events: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    """(event type, outcome) -> count; outcome is ``ok``, ``dead_letter`` or ``duplicate``."""
    dead_letters: Counter[str] = dataclasses.field(default_factory=Counter)
    """dead-letter reason code -> count."""
    signals: Counter[str] = dataclasses.field(default_factory=Counter)
    """signal kind (barge_in, rephrase, defect, teachable_moment, ...) -> count."""
    failure_points: Counter[str] = dataclasses.field(default_factory=Counter)
    evictions: Counter[str] = dataclasses.field(default_factory=Counter)
    """state kind (device, estimator) -> evicted entries."""

    def merge(self, other: EngineStats) -> None:
        for field in dataclasses.fields(self):
            getattr(self, field.name).update(getattr(other, field.name))
