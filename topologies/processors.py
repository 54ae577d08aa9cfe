"""Batch processors between Faust agents and the pure core (no Faust import: unit-testable).

Hot state lives in the core's plain objects; the changelog-backed table (any mutable mapping
of str -> bytes) is written once per changed key per batch and read back after a restart or
rebalance. Both stages run the core once per *input partition* so that watermarks, finalisation
and state are exactly those of the in-process replay of that partition.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any, NamedTuple, Protocol

import orjson
from kafka.partitioner.default import murmur2

from stream.engine import DeviceEngine
from stream.rates import DefectRateTracker, RateStage
from stream.records import Output
from stream.settings import Settings
from stream.stats import EngineStats


class Message(NamedTuple):
    key: bytes | None
    value: bytes
    partition: int
    offset: int
    topic: str = ""


def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives ``key``: Faust, aiokafka and
    kafka-python all agree, which is what keeps tables co-partitioned with their input."""
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions


def decode(blob: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """A table value: the JSON bytes written, or (after Faust restored the table from its
    changelog, where it applies the topic's json codec) the already-decoded object."""
    return blob if isinstance(blob, dict) else orjson.loads(blob)


class ChainLearner(Protocol):
    def learn(self, outputs: list[Output]) -> list[Output]: ...

    def commit(self) -> None: ...


class DeviceProcessor:
    """Stage 1 over batches: one ``DeviceEngine`` per input partition."""

    def __init__(self, settings: Settings, table: MutableMapping[str, bytes],
                 stats: EngineStats | None = None, chains: ChainLearner | None = None) -> None:
        """``chains`` (the personal rewrite layer) gets each batch's outputs and returns
        rewrite triggers; ``rephrase-chains`` records stay in the outputs for the global
        layer."""
        self.settings = settings
        self.table = table
        self.stats = stats if stats is not None else EngineStats()
        self.chains = chains
        self.engines: dict[int, DeviceEngine] = {}

    def reset(self) -> None:
        """Forget in-memory state (after a rebalance); it is reloaded from the table."""
        self.engines.clear()

    def engine(self, partition: int) -> DeviceEngine:
        eng = self.engines.get(partition)
        if eng is None:
            eng = self.engines[partition] = DeviceEngine(
                self.settings, self.stats, emit_chains=self.chains is not None)
            eng.devices.changes.enabled = True
            n = self.settings.partitions
            for device_id, blob in list(self.table.items()):
                if blob is None:  # a deletion (tombstone) restored from the changelog
                    continue
                if partition_of(device_id, n) == partition:
                    eng.devices.import_device(decode(blob))
        return eng

    def process(self, batch: Iterable[Message]) -> list[Output]:
        """Outputs of a batch. State changes stay in memory until ``commit``."""
        outputs: list[Output] = []
        for msg in batch:
            eng = self.engine(msg.partition)
            source = {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset}
            outputs += eng.process(msg.value, source)
        if self.chains is not None:
            outputs += self.chains.learn(outputs)
        return outputs

    def commit(self) -> None:
        """Write the state the last batches changed to the table: call it after their outputs
        were acknowledged, so a crash in between makes the batch run again (at-least-once)
        instead of finding its events already in the state (lost outputs)."""
        for eng in self.engines.values():
            devices = eng.devices
            dirty, removed = devices.take_dirty()
            for device_id in dirty:
                self.table[device_id] = orjson.dumps(devices.export_device(device_id))
            for device_id in removed:
                self.table.pop(device_id, None)
        if self.chains is not None:
            self.chains.commit()

    def state_sizes(self) -> dict[str, int]:
        return {"devices": sum(len(e.devices.devices) for e in self.engines.values())}

    def watermark(self) -> int:
        """Lowest stream watermark (event-time ms) over the partitions processed here."""
        marks = [e.devices.watermark for e in self.engines.values() if e.devices.watermark]
        return min(marks, default=0)


class RateProcessor:
    """Stage 2 over batches of ``rate-updates``.

    Idempotent under re-delivery: every key lives in exactly one partition of the rate-updates
    topic, so the table keeps, per key, the offset of the last update applied and skips
    anything at or below it.
    """

    def __init__(self, settings: Settings, table: MutableMapping[str, bytes],
                 stats: EngineStats | None = None) -> None:
        self.settings = settings
        self.table = table
        self.stats = stats if stats is not None else EngineStats()
        self.stage = self._new_stage()
        self.offsets: dict[str, int] = {}
        self.skipped = 0

    def reset(self) -> None:
        self.stage = self._new_stage()
        self.offsets.clear()

    def _new_stage(self) -> RateStage:
        stage = RateStage(self.settings, self.stats)
        stage.changes.enabled = True
        return stage

    def process(self, batch: Iterable[Message]) -> list[Output]:
        outputs: list[Output] = []
        for msg in batch:
            update: dict[str, Any] = orjson.loads(msg.value)
            rkey = f"{update['key_type']}:{update['key']}"
            if rkey not in self.offsets:
                self._load(rkey)
            if msg.offset <= self.offsets.get(rkey, -1):
                self.skipped += 1
                continue
            self.offsets[rkey] = msg.offset
            outputs += self.stage.apply(update)
        return outputs

    def commit(self) -> None:
        """Write changed estimates to the table (after the outputs were acknowledged)."""
        dirty, removed = self.stage.take_dirty()
        for rkey in dirty:
            value = self.stage.export_key(rkey)
            self.table[rkey] = orjson.dumps({"t": value, "o": self.offsets[rkey]})
        for rkey in removed:
            self.offsets.pop(rkey, None)
            self.table.pop(rkey, None)

    def _load(self, rkey: str) -> None:
        blob = self.table.get(rkey)
        if blob is None:
            self.offsets[rkey] = -1
            return
        data = decode(blob)
        self.stage.import_key(rkey, data["t"])
        self.offsets[rkey] = data["o"]

    def state_sizes(self) -> dict[str, int]:
        return {key_type: len(t) for key_type, t in self.stage.trackers.items()}

    def lookup(self, key_type: str, key: str) -> dict[str, Any] | None:
        """Current estimate (memory first, then the table) as a ``defect-rates`` record."""
        rkey = f"{key_type}:{key}"
        if rkey not in self.offsets:
            blob = self.table.get(rkey)
            if blob is None:
                return None
            tracker = DefectRateTracker(*decode(blob)["t"])
        else:
            tracker = self.stage.get(key_type, key)
            if tracker is None:
                return None
        return RateStage.record(key_type, key, tracker)
