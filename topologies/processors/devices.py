"""Stage 1 over batches: one ``DeviceEngine`` per input partition, device states in the
``device-state`` table."""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from functools import lru_cache

import orjson

from stream.engine import DeviceEngine
from stream.records import CHAINS, RATE_UPDATES, Output, event_ts
from stream.stats import EngineStats
from topologies.processors.merging import coalesce
from topologies.processors.state import co_partitioned, decode, partition_of
from topologies.processors.undo import UndoLog
from topologies.settings import KafkaSettings
from topologies.types import ChainLearner, Message

WATERMARK_PREFIX = "\x00watermark:"
"""Table keys of each input partition's stream watermark and last processed input offset
(device ids cannot hold control characters)."""


EVIDENCE_PREFIX = "\x00evidence:"
"""Table keys of the rows of each partition's pair evidence (``stream.pairs``)."""


@lru_cache(maxsize=1 << 17)
def evidence_key(partition: int, partitions: int, name: str, key: str) -> str:
    """The ``device-state`` key of one pair-evidence row, in ``partition`` (cached: a row is
    written many times, the salt search runs once). ``\\x1e`` ends the row key."""
    return co_partitioned(f"{EVIDENCE_PREFIX}{name}:{key}\x1e", partition, partitions)


SEEN_PREFIX = "\x00seen:"
"""Table keys of the rows of each input partition's seen-events filter (``stream.dedupe``)."""


def seen_row_key(partition: int, generation: int, row: int, partitions: int) -> str:
    """The ``device-state`` key of one row of ``partition``'s seen-events filter."""
    return co_partitioned(f"{SEEN_PREFIX}{partition}:{generation}:{row}\x1e", partition,
                          partitions)


def seen_row(key: str) -> tuple[int, int]:
    """(generation, row) of a ``seen_row_key``."""
    _, generation, row = key[len(SEEN_PREFIX):].partition("\x1e")[0].split(":")
    return int(generation), int(row)


def watermark_key(partition: int, partitions: int) -> str:
    """A ``device-state`` key for ``partition``'s stream watermark and offset that the default
    partitioner puts in that same partition, so it is restored with that partition's devices
    and written after them in the same changelog partition."""
    return co_partitioned(f"{WATERMARK_PREFIX}{partition}", partition, partitions)


_NO_EVENT_TIME = (RATE_UPDATES, CHAINS)
"""Internal streams: not signals, no event-time lag."""


class DeviceProcessor:
    """Stage 1 over batches: one ``DeviceEngine`` per input partition."""

    def __init__(self, settings: KafkaSettings, table: MutableMapping[str, bytes],
                 stats: EngineStats | None = None, chains: ChainLearner | None = None) -> None:
        """``chains`` (the personal rewrite layer) gets each batch's outputs and returns
        rewrite triggers; ``rephrase-chains`` records stay in the outputs for the global
        layer."""
        self.settings = settings
        self.table = table
        self.stats = stats if stats is not None else EngineStats()
        self.chains = chains
        self.engines: dict[int, DeviceEngine] = {}
        self.offsets: dict[int, int] = {}
        """Input partition -> offset of the last message processed (-1: none)."""
        self.saved: dict[int, tuple[int, ...]] = {}
        """Input partition -> (stream watermark, offset, evidence meta) as last written."""
        self.undo: dict[int, UndoLog] = {}
        self.event_time_lags_ms: list[int] = []
        """Per signal record of the last ``process`` call: the event time its partition's
        stream had reached when it was emitted (watermark + allowed lateness) minus its own."""

    def reset(self) -> None:
        """Forget in-memory state (after a rebalance); it is reloaded from the table."""
        self.engines.clear()
        self.offsets.clear()
        self.saved.clear()
        self.undo.clear()
        if self.chains is not None:
            self.chains.reset()

    def engine(self, partition: int) -> DeviceEngine:
        eng = self.engines.get(partition)
        if eng is None:
            eng = self.engines[partition] = DeviceEngine(
                self.settings, self.stats, emit_chains=self.chains is not None)
            eng.devices.changes.enabled = True
            eng.devices.evidence.track = True
            evidence = eng.devices.evidence.partition(partition)
            n = self.settings.partitions
            rows = {key: blob for key, blob in self.table.items()
                    if blob is not None  # None: a deletion (tombstone) from the changelog
                    and partition_of(key, n) == partition}
            # A commit killed before its commit point (the watermark entry) is undone first.
            mark = rows.get(watermark_key(partition, n))
            committed = decode(mark).get("offset", -1) if mark is not None else -1
            self.undo[partition] = UndoLog(partition, n)
            self.undo[partition].recover(self.table, rows, committed)
            states, seen_rows = [], []
            for key, blob in rows.items():
                if key.startswith(SEEN_PREFIX):  # raw fingerprints, not JSON
                    seen_rows.append((*seen_row(key), blob))
                    continue
                data = decode(blob)
                if key.startswith(WATERMARK_PREFIX):
                    eng.devices.restore_watermark(data["watermark"])
                    self.offsets[partition] = data.get("offset", -1)
                    if "evidence" in data:
                        evidence.restore_meta(data["evidence"])
                elif key.startswith(EVIDENCE_PREFIX):
                    name, _, row_key = key[len(EVIDENCE_PREFIX):].rpartition("\x1e")[0] \
                        .partition(":")
                    evidence.restore(name, row_key, data)
                else:
                    states.append(data)
            # Least recently active first, as the running stage keeps them (idle expiry).
            for data in sorted(states, key=lambda d: d["last_ts"]):
                eng.devices.restore(data["device_id"], data)
            eng.devices.seen.load_rows(seen_rows)
            self.offsets.setdefault(partition, -1)
            self.saved[partition] = (eng.devices.watermark, self.offsets[partition],
                                     *evidence.snapshot_meta())
        return eng

    def process(self, batch: Iterable[Message]) -> list[Output]:
        """Outputs of a batch. State changes stay in memory until ``commit``."""
        outputs: list[Output] = []
        offsets = self.offsets
        lags = self.event_time_lags_ms = []
        lateness = self.settings.allowed_lateness_ms
        for msg in batch:
            eng = self.engine(msg.partition)
            if msg.offset <= offsets[msg.partition]:
                # Re-delivered (input offsets are committed after the state is written): the
                # restored state holds its effects and its outputs went out. Processing it
                # again could even dead-letter it as late, were its device expired since.
                eng.count_redelivered(msg.value)
                continue
            offsets[msg.partition] = msg.offset
            source = {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset}
            emitted = eng.process(msg.value, source)
            if emitted:
                # At emission, not per batch: a chunk can span hours of a recorded stream.
                head = eng.devices.watermark + lateness
                lags += [head - ts for o in emitted if o.stream not in _NO_EVENT_TIME
                         and (ts := event_ts(o)) is not None]
                outputs += emitted
        if self.chains is not None:
            outputs += self.chains.learn(outputs)
        return coalesce(outputs)

    def commit(self) -> None:
        """Write the state the last batches changed to the table: call it after their outputs
        were acknowledged, so a crash in between makes the batch run again (at-least-once)
        instead of finding its events already in the state (lost outputs).

        Per partition, a batch's rows land as a whole or not at all (``undo``): first the
        undo entry (the rows' values before the batch), then the seen-events filter, device
        and pair-evidence rows, and last the partition's watermark entry, the commit point.
        The personal miners come before all that (a miner ahead of its device state re-learns
        nothing: re-emitted chains are recognised)."""
        if self.chains is not None:
            self.chains.commit()
        n = self.settings.partitions
        for partition, eng in self.engines.items():
            writes = self._writes(partition, eng)
            undo = self.undo[partition]
            if writes:
                undo.write(self.table, self.offsets[partition], writes)
                for key, blob in writes.items():
                    if blob is None:
                        self.table.pop(key, None)
                    else:
                        self.table[key] = blob
            evidence = eng.devices.evidence.partition(partition)
            position = (eng.devices.watermark, self.offsets[partition],
                        *evidence.snapshot_meta())
            if position != self.saved.get(partition):
                self.table[watermark_key(partition, n)] = orjson.dumps({
                    "watermark": position[0], "offset": position[1],
                    "evidence": list(position[2:])})
                self.saved[partition] = position
            if writes:
                undo.tidy(self.table)

    def _writes(self, partition: int, eng: DeviceEngine) -> dict[str, bytes | None]:
        """The partition's rows changed since the last commit (None: deleted)."""
        n = self.settings.partitions
        devices = eng.devices
        writes: dict[str, bytes | None] = {}
        rows, gone = devices.seen.take_rows()
        for generation, row, blob in rows:
            writes[seen_row_key(partition, generation, row, n)] = blob
        for generation, count in gone:
            for row in range(count):
                writes[seen_row_key(partition, generation, row, n)] = None
        dirty, removed = devices.take_changes()
        for device_id in dirty:
            writes[co_partitioned(device_id, partition, n)] = orjson.dumps(
                devices.snapshot(device_id))
        for device_id in removed:
            writes[co_partitioned(device_id, partition, n)] = None
        evidence = devices.evidence.partition(partition)
        changed, dropped = evidence.take_changes()
        for name, key in changed:
            writes[evidence_key(partition, n, name, key)] = orjson.dumps(
                evidence.snapshot(name, key))
        for name, key in dropped:
            writes[evidence_key(partition, n, name, key)] = None
        return writes

    def state_sizes(self) -> dict[str, int]:
        return {"devices": sum(len(e.devices.devices) for e in self.engines.values())}

    def watermark(self) -> int:
        """Lowest stream watermark (event-time ms) over the partitions processed here."""
        marks = [e.devices.watermark for e in self.engines.values() if e.devices.watermark]
        return min(marks, default=0)
