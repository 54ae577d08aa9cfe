"""Batch processors between Faust agents and the pure core (no Faust import: unit-testable).

Hot state lives in the core's plain objects; the changelog-backed table (any mutable mapping
of str -> bytes) is written once per changed key per batch and read back after a restart or
rebalance. Both stages run the core once per *input partition* so that watermarks, finalisation
and state are exactly those of the in-process replay of that partition.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from functools import lru_cache
from typing import Any, NamedTuple, Protocol

import orjson
from kafka.partitioner.default import murmur2

from stream.engine import DeviceEngine
from stream.rates import DefectRateTracker, RateStage
from stream.records import CHAINS, RATE_UPDATES, Output
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


def decode(blob: bytes | str) -> dict[str, Any]:
    """A table value (the JSON bytes written, as written or restored from the changelog)."""
    return orjson.loads(blob)


class RawKeyTable(MutableMapping[str, bytes]):
    """A str-keyed view of a table whose keys and values are raw bytes (a Faust ``Table`` with
    ``key_type=bytes, value_type=bytes``).

    Raw keys are what keep a table co-partitioned with its input: the changelog record's key
    is exactly the input record's key, so the default partitioner puts both in the same
    partition, and the worker that owns an input partition restores exactly the state of its
    keys. (A str key type makes Faust JSON-encode keys: ``"dev1"`` with quotes hashes to
    another partition, and a worker that takes over half the partitions restores the wrong
    half of the state.)

    >>> data = {}
    >>> table = RawKeyTable(data)
    >>> table["dev1"] = b"{}"
    >>> data, table.get("dev1"), list(table.items())
    ({b'dev1': b'{}'}, b'{}', [('dev1', b'{}')])
    >>> table.pop("dev1"), table.pop("dev1", None), len(table)
    (b'{}', None, 0)
    """

    def __init__(self, table: MutableMapping[bytes, bytes]) -> None:
        self.table = table

    def __getitem__(self, key: str) -> bytes:
        return self.table[key.encode()]

    def get(self, key: str, default: Any = None) -> Any:
        return self.table.get(key.encode(), default)

    def __setitem__(self, key: str, value: bytes) -> None:
        self.table[key.encode()] = value

    def __delitem__(self, key: str) -> None:
        del self.table[key.encode()]

    def __iter__(self) -> Iterator[str]:
        return (key.decode() for key in self.table)

    def __len__(self) -> int:
        return len(self.table)


def first_application(applied: dict[str, list[Any]], record: dict[str, Any],
                      fallback_offset: int | None) -> bool:
    """True (and remembered in ``applied``) unless ``record`` was applied before.

    Stage 1 stamps what it emits with ``src`` = [input partition, input offset] of the message
    it was processing; it emits in input order, and after a crash re-processing from the
    restored state emits the same records with the same ``src`` (the stream watermark is
    restored too). So per source partition it is enough to keep the last offset applied and
    the event ids applied at that offset. Records without ``src`` fall back to their own
    offset (``fallback_offset``) in the topic they were read from, or are always applied
    (``None``).

    >>> applied = {}
    >>> [first_application(applied, r, 0) for r in (
    ...     {"src": [0, 5], "event_id": "a"}, {"src": [0, 5], "event_id": "b"},
    ...     {"src": [0, 5], "event_id": "a"}, {"src": [0, 4], "event_id": "z"},
    ...     {"src": [1, 2], "event_id": "a"}, {"src": [0, 6], "event_id": "a"})]
    [True, True, False, False, True, True]
    """
    src = record.get("src")
    item = record.get("event_id") or record["event_ids"][-1]
    if src:
        part, offset = str(src[0]), src[1]
    elif fallback_offset is None:
        return True
    else:
        part, offset = "topic", fallback_offset
    last = applied.get(part)
    if last is not None:
        if offset < last[0] or (offset == last[0] and item in last[1]):
            return False
        if offset == last[0]:
            last[1].append(item)
            return True
    applied[part] = [offset, [item]]
    return True


WATERMARK_PREFIX = "\x00watermark:"
"""Table keys of each input partition's stream watermark and last processed input offset
(device ids cannot hold control characters)."""


SALT_SEPARATOR = "\x00"
"""Between a key and its salt (ids cannot hold control characters)."""


@lru_cache(maxsize=65_536)
def co_partitioned(key: str, partition: int, partitions: int) -> str:
    """``key`` itself if the default partitioner puts it in ``partition``, else ``key`` with
    the first salt that does: the table key of state that belongs to input ``partition``.

    A device's state must sit in the changelog partition of its input partition (that is what
    a worker restores when it gets the partition). The input key is the raw device id; the
    state's id is a pseudonym when ``FEEDBACK_STREAM_DEVICE_ID_KEY`` is set (and may differ from
    the key whenever a producer keys by something else), so it is salted into place.

    >>> [partition_of(co_partitioned(k, 3, 4), 4) for k in ("a", "b", "c")]
    [3, 3, 3]
    >>> co_partitioned("dev1", partition_of("dev1", 4), 4)
    'dev1'
    """
    salt = 0
    salted = key
    while partition_of(salted, partitions) != partition:
        salted = f"{key}{SALT_SEPARATOR}{salt}"
        salt += 1
    return salted


def watermark_key(partition: int, partitions: int) -> str:
    """A ``device-state`` key for ``partition``'s stream watermark and offset that the default
    partitioner puts in that same partition, so it is restored with that partition's devices
    and written after them in the same changelog partition."""
    return co_partitioned(f"{WATERMARK_PREFIX}{partition}", partition, partitions)


MAX_MERGED = 1_000
"""Items per merged record: keeps a record far below Kafka's 1 MiB default message size
(~100-200 bytes per item) whatever the batch size."""


def coalesce(outputs: list[Output]) -> list[Output]:
    """A batch's internal records, merged: one ``rate-updates`` record per key instead of one
    per finalised turn (``updates`` holds the turns' updates in order), and one
    ``rephrase-chains`` record (``chains``, in order) instead of one per chain, each with at
    most ``MAX_MERGED`` items. Most of a batch's updates go to a few busy keys (intents,
    domains, device types, popular utterances), nearly every turn ends a chain, and every
    record costs a produce, a fetch and a trip through Faust's per-message machinery."""
    rest: list[Output] = []
    full: list[Output] = []
    merged: dict[str, Output] = {}
    for out in outputs:
        if out.stream == CHAINS:
            key, field, item = CHAINS, "chains", out.record
            header: dict[str, Any] = {}
        elif out.stream == RATE_UPDATES:
            key, field, item = out.key, "updates", dict(out.record)
            header = {"key_type": item.pop("key_type"), "key": item.pop("key")}
        else:
            rest.append(out)
            continue
        group = merged.get(key)
        if group is None or len(group.record[field]) >= MAX_MERGED:
            if group is not None:
                full.append(group)  # published before the key's next group: order kept
            group = merged[key] = Output(out.stream, key, {**header, field: []})
        group.record[field].append(item)
    return rest + full + list(merged.values())


def expand_chains(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The chains of a (possibly merged) ``rephrase-chains`` record."""
    chains = record.get("chains")
    return [record] if chains is None else chains


def expand_rate_updates(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The single updates of a (possibly coalesced) ``rate-updates`` record."""
    updates = record.get("updates")
    if updates is None:
        return [record]
    key_type, key = record["key_type"], record["key"]
    return [{"key_type": key_type, "key": key, **update} for update in updates]


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
        self.offsets: dict[int, int] = {}
        """Input partition -> offset of the last message processed (-1: none)."""
        self.saved: dict[int, tuple[int, int]] = {}
        """Input partition -> (stream watermark, offset) as last written to the table."""

    def reset(self) -> None:
        """Forget in-memory state (after a rebalance); it is reloaded from the table."""
        self.engines.clear()
        self.offsets.clear()
        self.saved.clear()

    def engine(self, partition: int) -> DeviceEngine:
        eng = self.engines.get(partition)
        if eng is None:
            eng = self.engines[partition] = DeviceEngine(
                self.settings, self.stats, emit_chains=self.chains is not None)
            eng.devices.changes.enabled = True
            n = self.settings.partitions
            states = []
            for key, blob in list(self.table.items()):
                if blob is None:  # a deletion (tombstone) restored from the changelog
                    continue
                if partition_of(key, n) != partition:
                    continue
                data = decode(blob)
                if key.startswith(WATERMARK_PREFIX):
                    eng.devices.import_watermark(data["watermark"])
                    self.offsets[partition] = data.get("offset", -1)
                else:
                    states.append(data)
            # Least recently active first, as the running stage keeps them (idle expiry).
            for data in sorted(states, key=lambda d: d["last_ts"]):
                eng.devices.import_device(data)
            self.offsets.setdefault(partition, -1)
            self.saved[partition] = (eng.devices.watermark, self.offsets[partition])
        return eng

    def process(self, batch: Iterable[Message]) -> list[Output]:
        """Outputs of a batch. State changes stay in memory until ``commit``."""
        outputs: list[Output] = []
        offsets = self.offsets
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
            outputs += eng.process(msg.value, source)
        if self.chains is not None:
            outputs += self.chains.learn(outputs)
        return coalesce(outputs)

    def commit(self) -> None:
        """Write the state the last batches changed to the table: call it after their outputs
        were acknowledged, so a crash in between makes the batch run again (at-least-once)
        instead of finding its events already in the state (lost outputs).

        Order matters when a crash lets only the first writes land: personal miners first
        (a miner ahead of its device state re-learns nothing: re-emitted chains are
        recognised), then the devices, then each partition's watermark."""
        if self.chains is not None:
            self.chains.commit()
        for partition, eng in self.engines.items():
            devices = eng.devices
            dirty, removed = devices.take_dirty()
            n = self.settings.partitions
            for device_id in dirty:
                self.table[co_partitioned(device_id, partition, n)] = orjson.dumps(
                    devices.export_device(device_id))
            for device_id in removed:
                self.table.pop(co_partitioned(device_id, partition, n), None)
            position = (devices.watermark, self.offsets[partition])
            if position != self.saved.get(partition):
                # Last: on the changelog (same partition), a restored watermark and offset
                # imply the device states written before them.
                key = watermark_key(partition, self.settings.partitions)
                self.table[key] = orjson.dumps({"watermark": position[0],
                                                "offset": position[1]})
                self.saved[partition] = position

    def state_sizes(self) -> dict[str, int]:
        return {"devices": sum(len(e.devices.devices) for e in self.engines.values())}

    def watermark(self) -> int:
        """Lowest stream watermark (event-time ms) over the partitions processed here."""
        marks = [e.devices.watermark for e in self.engines.values() if e.devices.watermark]
        return min(marks, default=0)


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
            rkey = f"{record['key_type']}:{record['key']}"
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
        dirty, removed = self.stage.take_dirty()
        for rkey in dirty:
            value = self.stage.export_key(rkey)
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
            self.stage.import_key(rkey, data["t"])
            applied = data["s"]
        self.applied[rkey] = applied
        return applied

    def state_sizes(self) -> dict[str, int]:
        return {key_type: len(t) for key_type, t in self.stage.trackers.items()}

    def lookup(self, key_type: str, key: str) -> dict[str, Any] | None:
        """Current estimate (memory first, then the table) as a ``defect-rates`` record."""
        rkey = f"{key_type}:{key}"
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
