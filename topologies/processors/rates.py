"""Stage 2 over batches of (coalesced) ``rate-updates``: estimates in the ``defect-rates``
table."""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson

from stream.rates import DefectRateTracker, RateStage
from stream.records import Output, rate_key
from stream.settings import Settings
from stream.stats import EngineStats
from topologies.processors.merging import expand_rate_updates
from topologies.processors.state import decode, first_application
from topologies.types import Message


class RateProcessor:
    """Stage 2 over batches of (coalesced) ``rate-updates``; emits one ``defect-rates``
    record per changed key per batch.

    Idempotent under re-delivery and under stage 1 re-emitting updates after a crash: the
    table keeps, per key, the source positions already applied (``first_application``).
    """

    def __init__(self, settings: Settings, table: MutableMapping[str, bytes],
                 stats: EngineStats | None = None) -> None:
        self.settings = settings
        self.table = table
        self.stats = stats if stats is not None else EngineStats()
        self.stage = self._new_stage()
        self.applied: dict[str, dict[str, list[Any]]] = {}
        """key_type:key -> source partition -> [last offset, event ids at that offset]."""
        self.skipped = 0

    def reset(self) -> None:
        self.stage = self._new_stage()
        self.applied.clear()

    def _new_stage(self) -> RateStage:
        stage = RateStage(self.settings, self.stats)
        stage.changes.enabled = True
        return stage

    def process(self, batch: Iterable[Message]) -> list[Output]:
        outputs: list[Output] = []
        changed: dict[str, tuple[str, str]] = {}
        for msg in batch:
            record: dict[str, Any] = orjson.loads(msg.value)
            rkey = rate_key(record["key_type"], record["key"])
            applied = self.applied.get(rkey)
            if applied is None:
                applied = self._load(rkey)
            for update in expand_rate_updates(record):
                if first_application(applied, update, msg.offset):
                    outputs += self.stage.apply(update, estimate=False)
                    changed[rkey] = (record["key_type"], record["key"])
                else:
                    self.skipped += 1
        # One estimate per changed key per batch: the topic is compacted, and estimates in
        # between would multiply the records produced (and the intervals computed).
        for key_type, key in changed.values():
            estimate = self.stage.estimate(key_type, key)
            if estimate is not None:  # None: evicted again within the batch
                outputs.append(estimate)
        return outputs

    def commit(self) -> None:
        """Write changed estimates to the table (after the outputs were acknowledged)."""
        dirty, removed = self.stage.take_changes()
        for rkey in dirty:
            value = self.stage.snapshot(rkey)
            self.table[rkey] = orjson.dumps({"t": value, "s": self.applied[rkey]})
        for rkey in removed:
            self.applied.pop(rkey, None)
            self.table.pop(rkey, None)

    def _load(self, rkey: str) -> dict[str, list[Any]]:
        blob = self.table.get(rkey)
        if blob is None:
            applied: dict[str, list[Any]] = {}
        else:
            data = decode(blob)
            self.stage.restore(rkey, data["t"])
            applied = data["s"]
        self.applied[rkey] = applied
        return applied

    def state_sizes(self) -> dict[str, int]:
        return {key_type: len(t) for key_type, t in self.stage.trackers.items()}

    def lookup(self, key_type: str, key: str) -> dict[str, Any] | None:
        """Current estimate (memory first, then the table) as a ``defect-rates`` record."""
        rkey = rate_key(key_type, key)
        if rkey not in self.applied:
            blob = self.table.get(rkey)
            if blob is None:
                return None
            tracker = DefectRateTracker(*decode(blob)["t"])
        else:
            tracker = self.stage.get(key_type, key)
            if tracker is None:
                return None
        return RateStage.record(key_type, key, tracker)
