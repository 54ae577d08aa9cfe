"""The global rewrite layer as a single-partition stage over ``rephrase-chains``.

Every chain also goes to the ``rephrase-chains`` topic (one record per stage-1 batch holding its
chains), which has ONE partition: transitions are far fewer than events (one record per finished
chain), and the absorbing chain needs all of them in one place. Its state is one snapshot in the
``global-rewrites`` table, written after every batch together with the source positions of the
chains applied (re-delivered or re-emitted chains are skipped, see ``first_application``).
Scaling limit: one worker does the global mining, and each snapshot write is O(states) — fine
for tens of thousands of states; beyond that the miner's state should be split into
per-utterance table rows.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson

from stream.records import Output
from stream.rewrite_config import RewriteConfig
from stream.rewrites import RewriteMiner
from stream.settings import Settings
from stream.stats import EngineStats
from topologies.processors.merging import expand_chains
from topologies.processors.state import first_application, miner_row, read_miner_row
from topologies.types import Message

GLOBAL_KEY = "global"


class GlobalRewriteProcessor:
    """The global layer over batches of ``rephrase-chains`` records (one partition)."""

    def __init__(self, settings: Settings, table: MutableMapping[str, Any],
                 stats: EngineStats | None = None) -> None:
        self.settings = settings
        self.config = RewriteConfig.from_settings(settings, "global")
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
            snapshot, self.applied = read_miner_row(self.table.get(GLOBAL_KEY))
            self.miner = (RewriteMiner(self.config, "global", None, self.stats) if snapshot is None
                          else RewriteMiner.from_dict(snapshot, self.stats, self.config))
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
            self.table[GLOBAL_KEY] = miner_row(self.miner.to_dict(False), self.applied)
            self.learned = 0

    def state_sizes(self) -> dict[str, int]:
        if self.miner is None:
            return {"states": 0, "transitions": 0, "support_pairs": 0, "published": 0}
        return self.miner.state_sizes()

    def lookup(self, utterance: str) -> dict[str, Any] | None:
        return self._load().get(utterance)
