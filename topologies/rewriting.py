"""Rewrite mining in the topology: the personal layer next to stage 1, the global layer as a
single-partition stage.

- **Personal** (per device): chains are born in stage 1, partitioned by device, so each
  device's ``RewriteMiner`` runs there, its state in the ``personal-rewrites`` table (device id
  -> miner snapshot), co-partitioned with the input and written once per changed device per
  batch.
- **Global**: every chain also goes to the ``rephrase-chains`` topic (one record per stage-1
  batch holding its chains), which has ONE partition:
  transitions are far fewer than events (one record per finished chain), and the absorbing chain
  needs all of them in one place. Its state is one snapshot in the ``global-rewrites`` table,
  written after every batch together with the source positions of the chains applied
  (re-delivered or re-emitted chains are skipped, see ``first_application``). Scaling limit:
  one worker does the global mining, and each snapshot write is O(states) — fine for tens of
  thousands of states; beyond that the miner's state should be split into per-utterance table
  rows.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson

from stream.engine import rewrite_configs
from stream.records import CHAINS, Output
from stream.rewrites import RewriteMiner
from stream.settings import Settings
from stream.stats import EngineStats
from topologies.processors import (
    Message,
    co_partitioned,
    decode,
    expand_chains,
    first_application,
    partition_of,
)

GLOBAL_KEY = "global"


class PersonalRewrites:
    """Per-device miners loaded lazily from the table; ``learn`` feeds stage-1 chain outputs."""

    def __init__(self, settings: Settings, table: MutableMapping[str, Any],
                 stats: EngineStats | None = None) -> None:
        self.config = rewrite_configs(settings)[1]
        self.table = table
        self.stats = stats
        self.partitions = settings.partitions
        self.miners: dict[str, RewriteMiner] = {}
        self.applied: dict[str, dict[str, list[Any]]] = {}
        """device id -> source positions of the chains its miner learned."""
        self.homes: dict[str, int] = {}
        """device id -> its input partition (from the chains' ``src``), whose changelog
        partition holds the device's miner (``co_partitioned``)."""
        self.changed: set[str] = set()

    def reset(self) -> None:
        self.miners.clear()
        self.applied.clear()
        self.homes.clear()
        self.changed.clear()

    def _home(self, device_id: str) -> int:
        return self.homes.get(device_id, partition_of(device_id, self.partitions))

    def _stored(self, device_id: str) -> bytes | None:
        """The device's miner snapshot; without a known home (an HTTP lookup) every
        partition's key is tried, the device id's own partition first."""
        home = self._home(device_id)
        homes = [home] if device_id in self.homes else [
            home, *(p for p in range(self.partitions) if p != home)]
        for partition in homes:
            blob = self.table.get(co_partitioned(device_id, partition, self.partitions))
            if blob is not None:
                self.homes[device_id] = partition
                return blob
        return None

    def miner(self, device_id: str) -> RewriteMiner:
        miner = self.miners.get(device_id)
        if miner is None:
            blob = self._stored(device_id)
            if blob is None:
                miner = RewriteMiner(self.config, "personal", device_id, self.stats)
                self.applied[device_id] = {}
            else:
                data = decode(blob)
                miner = RewriteMiner.from_dict(data["m"], self.stats, self.config)
                self.applied[device_id] = data["s"]
            self.miners[device_id] = miner
        return miner

    def learn(self, outputs: list[Output]) -> list[Output]:
        """Rewrite triggers of the chains among ``outputs`` (state written by ``commit``).
        A chain re-emitted after a crash (this table was written, the device's state was
        not) is learned once."""
        triggers: list[Output] = []
        learned: dict[str, None] = {}  # a dict, not a set: deterministic decision order
        for out in outputs:
            if out.stream == CHAINS:
                device_id = out.record["device_id"]
                if out.record.get("src"):
                    self.homes[device_id] = out.record["src"][0]
                miner = self.miner(device_id)
                if first_application(self.applied[device_id], out.record, None):
                    triggers += miner.learn_one(out.record)
                    self.changed.add(device_id)
                    learned[device_id] = None
        # rewrite_decide_every > 1: decisions at most one batch late, and nothing pending when
        # ``commit`` snapshots the miners (no-op with 1)
        for device_id in learned:
            triggers += self.miners[device_id].decide()
        return triggers

    def commit(self) -> None:
        for device_id in self.changed:
            key = co_partitioned(device_id, self._home(device_id), self.partitions)
            self.table[key] = orjson.dumps({"m": self.miners[device_id].to_dict(False),
                                            "s": self.applied[device_id]})
        self.changed.clear()

    def lookup(self, utterance: str, device_id: str) -> dict[str, Any] | None:
        if device_id not in self.miners and self._stored(device_id) is None:
            return None
        return self.miner(device_id).get(utterance)


class GlobalRewriteProcessor:
    """The global layer over batches of ``rephrase-chains`` records (one partition)."""

    def __init__(self, settings: Settings, table: MutableMapping[str, Any],
                 stats: EngineStats | None = None) -> None:
        self.config = rewrite_configs(settings)[0]
        self.table = table
        self.stats = stats
        self.miner: RewriteMiner | None = None
        self.applied: dict[str, list[Any]] = {}
        self.skipped = 0
        self.learned = 0
        """Chains learned since the last snapshot."""

    def reset(self) -> None:
        self.miner = None
        self.learned = 0

    def _load(self) -> RewriteMiner:
        if self.miner is None:
            blob = self.table.get(GLOBAL_KEY)
            if blob is None:
                self.miner, self.applied = RewriteMiner(self.config, "global", None,
                                                        self.stats), {}
            else:
                data = decode(blob)
                self.miner = RewriteMiner.from_dict(data["m"], self.stats, self.config)
                self.applied = data["s"]
        return self.miner

    def process(self, batch: Iterable[Message]) -> list[Output]:
        miner = self._load()
        outputs: list[Output] = []
        for msg in batch:
            for chain in expand_chains(orjson.loads(msg.value)):
                if not first_application(self.applied, chain, msg.offset):
                    self.skipped += 1
                    continue
                outputs += miner.learn_one(chain)
                self.learned += 1
        # rewrite_decide_every > 1: decisions at most one batch late, and nothing pending when
        # ``commit`` snapshots the miner (no-op with 1)
        return outputs + miner.decide()

    def commit(self) -> None:
        """One snapshot of the miner and the chains' positions (after outputs were acked)."""
        if self.learned and self.miner is not None:
            self.table[GLOBAL_KEY] = orjson.dumps({"m": self.miner.to_dict(False),
                                                   "s": self.applied})
            self.learned = 0

    def lookup(self, utterance: str) -> dict[str, Any] | None:
        return self._load().get(utterance)
