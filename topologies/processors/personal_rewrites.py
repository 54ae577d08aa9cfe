"""The personal rewrite layer beside stage 1: ``stream.rewrite_layers.PersonalRewriteMiner``
(the same class the in-process engine runs, with its one cap ``rewrite_personal_max_devices``)
over the ``personal-rewrites`` table.

Chains are born in stage 1, partitioned by device, so each device's miner runs there; its row
(device id -> miner snapshot + source positions of the chains it learned) sits in the changelog
partition of the device's input partition (``co_partitioned``: the id may be a pseudonym) and
is written once per changed device per batch. A device the cap evicts has its
rewrites withdrawn and its row deleted, as in the replay.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from stream.records import CHAINS, Output
from stream.rewrite_layers import PersonalRewriteMiner
from stream.rewrites import RewriteMiner
from stream.stats import EngineStats
from topologies.processors.state import (
    co_partitioned,
    first_application,
    miner_row,
    partition_of,
    read_miner_row,
)
from topologies.settings import KafkaSettings


class PersonalRewrites:
    """``ChainLearner`` of ``DeviceProcessor``: miners loaded lazily from the table."""

    def __init__(self, settings: KafkaSettings, table: MutableMapping[str, Any],
                 stats: EngineStats | None = None) -> None:
        self.settings = settings
        self.table = table
        self.stats = stats
        self.layer = self._new_layer()
        self.applied: dict[str, dict[str, list[Any]]] = {}
        """device id -> source positions of the chains its miner learned."""
        self.partitions = settings.partitions
        self.homes: dict[str, int] = {}
        """device id -> its input partition (from the chains' ``src``), whose changelog
        partition holds the device's miner (``co_partitioned``)."""

    def _new_layer(self) -> PersonalRewriteMiner:
        layer = PersonalRewriteMiner.from_settings(self.settings, self.stats)
        layer.changes.enabled = True
        return layer

    def reset(self) -> None:
        self.layer = self._new_layer()
        self.applied.clear()
        self.homes.clear()

    def _key(self, device_id: str) -> str:
        home = self.homes.get(device_id, partition_of(device_id, self.partitions))
        return co_partitioned(device_id, home, self.partitions)

    def _stored(self, device_id: str) -> bytes | None:
        """The device's miner row; without a known home (an HTTP lookup) every partition's
        key is tried, the device id's own partition first."""
        home = self.homes.get(device_id, partition_of(device_id, self.partitions))
        homes = [home] if device_id in self.homes else [
            home, *(p for p in range(self.partitions) if p != home)]
        for partition in homes:
            blob = self.table.get(co_partitioned(device_id, partition, self.partitions))
            if blob is not None:
                self.homes[device_id] = partition
                return blob
        return None

    def _applied(self, device_id: str) -> dict[str, list[Any]]:
        """The device's applied positions, its miner restored from the table on first use."""
        applied = self.applied.get(device_id)
        if applied is None:
            snapshot, applied = read_miner_row(self._stored(device_id))
            if snapshot is not None:
                self.layer.restore(device_id, snapshot)
            self.applied[device_id] = applied
        return applied

    def learn(self, outputs: list[Output]) -> list[Output]:
        """Rewrite triggers of the chains among ``outputs`` (state written by ``commit``).
        A chain re-emitted after a crash (this table was written, the device's state was
        not) is learned once."""
        triggers: list[Output] = []
        for out in outputs:
            if out.stream != CHAINS:
                continue
            device_id = out.record["device_id"]
            if out.record.get("src"):
                self.homes[device_id] = out.record["src"][0]
            if first_application(self._applied(device_id), out.record, None):
                triggers += self.layer.learn_one(out.record)
        # rewrite_decide_every > 1: decisions at most one batch late, and nothing pending when
        # ``commit`` snapshots the miners (no-op with 1)
        return triggers + self.layer.decide()

    def commit(self) -> None:
        changed, evicted = self.layer.take_changes()
        for device_id in changed:
            snapshot = self.layer.snapshot(device_id)
            assert snapshot is not None  # ChangeSet: an evicted device is only in ``evicted``
            self.table[self._key(device_id)] = miner_row(snapshot, self.applied[device_id])
        for device_id in evicted:
            self.table.pop(self._key(device_id), None)
            self.applied.pop(device_id, None)
            self.homes.pop(device_id, None)

    def state_sizes(self) -> dict[str, int]:
        return self.layer.state_sizes()

    def lookup(self, utterance: str, device_id: str) -> dict[str, Any] | None:
        """The device's published rewrite (memory first, then the table; nothing is loaded)."""
        if device_id in self.layer.miners:
            return self.layer.get(utterance, device_id)
        snapshot, _ = read_miner_row(self._stored(device_id))
        if snapshot is None:
            return None
        return RewriteMiner.from_dict(snapshot, self.stats, self.layer.config).get(utterance)
