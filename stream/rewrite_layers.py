"""The two rewrite layers: one ``RewriteMiner`` per device (personal) beside the global one.

``PersonalRewriteMiner`` is the only personal layer: the in-process engine feeds it through
``RewriteLayers``, and the Kafka worker (``topologies.processors.personal_rewrites``) wraps the
same class around its changelog-backed table, so both paths bound memory with the one cap
``rewrite_personal_max_devices``.

>>> layers = RewriteLayers(personal_config=RewriteConfig(min_support=2, max_states=1_000))
>>> chain = {"device_id": "d1", "utterances": ["play jas", "play jazz"], "ts": 1,
...          "outcome": "success"}
>>> outs = layers.learn_one(chain) + layers.learn_one({**chain, "ts": 2})
>>> outs = layers.learn_one({**chain, "utterances": ["play jas"], "outcome": "failure"})
>>> layers.lookup("play jas", "d1")["rewrite"], layers.lookup("play jas", "d2") is None
('play jazz', True)
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from stream.changes import ChangeSet
from stream.records import Output
from stream.rewrite_config import RewriteConfig, parse_chain
from stream.rewrites import RewriteMiner
from stream.settings import Settings
from stream.stats import EngineStats


class PersonalRewriteMiner:
    """One small ``RewriteMiner`` per device, fed with that device's chains only.

    At most ``max_devices`` miners; the least recently active device is dropped (its rewrites
    are withdrawn so that a compacted topic does not keep them), counted in ``evictions``.
    """

    def __init__(self, config: RewriteConfig | None = None, max_devices: int = 10_000,
                 stats: EngineStats | None = None) -> None:
        self.config = config or RewriteConfig(max_states=1_000)
        self.max_devices = max_devices
        self.stats = stats
        self.miners: OrderedDict[str, RewriteMiner] = OrderedDict()  # least recently active first
        self.evictions = 0
        self.changes = ChangeSet()
        """Devices whose miner changed or was evicted (for table writes; enable to track)."""
        # decide_every > 1 counts the layer's chains (a device alone rarely has N): devices
        # with chains since the last decision, in order of their first one, and their number.
        self._dirty: dict[str, None] = {}
        self._since = 0

    @classmethod
    def from_settings(cls, settings: Settings,
                      stats: EngineStats | None = None) -> PersonalRewriteMiner:
        return cls(RewriteConfig.from_settings(settings, "personal"),
                   settings.rewrite_personal_max_devices, stats)

    # Same vocabulary as DeviceStage and RateStage: snapshot(key) / restore(key, data) /
    # take_changes(); the data is the device miner's to_dict(False).
    def snapshot(self, device_id: str) -> dict[str, Any] | None:
        miner = self.miners.get(device_id)
        return None if miner is None else miner.to_dict(with_config=False)

    def restore(self, device_id: str, data: Mapping[str, Any]) -> RewriteMiner:
        """Put back one device's miner from its ``snapshot``."""
        miner = RewriteMiner.from_dict(data, self.stats, self.config)
        self.miners[device_id] = miner
        return miner

    def take_changes(self) -> tuple[set[str], set[str]]:
        """(devices whose miner changed, devices evicted) since the last call."""
        return self.changes.take()

    def learn_one(self, chain: Mapping[str, Any]) -> list[Output]:
        utts, success, ts = parse_chain(chain)  # invalid chains change nothing
        return self.learn_parsed(chain["device_id"], utts, success, ts)

    def learn_parsed(self, device_id: str, utts: list[str], success: bool, ts: int) -> list[Output]:
        miners = self.miners
        miner = miners.get(device_id)
        if miner is None:
            miner = miners[device_id] = RewriteMiner(self.config, "personal", device_id,
                                                     self.stats)
        else:
            miners.move_to_end(device_id)  # most recently active last (the eviction order)
        out = miner.learn_parsed(utts, success, ts)
        self.changes.touch(device_id)
        while len(miners) > self.max_devices:
            oldest_id, oldest = miners.popitem(last=False)
            oldest.withdraw_all(ts, out)
            self.changes.drop(oldest_id)
            self.evictions += 1
            if self.stats is not None:
                self.stats.evictions["rewrite_device"] += 1
        if self.config.decide_every > 1:
            self._dirty[device_id] = None
            self._since += 1
            if self._since >= self.config.decide_every:
                out += self.decide()
        return out

    def decide(self) -> list[Output]:
        """``RewriteMiner.decide`` of every device with chains since the last decision, in
        order of their first chain (an evicted device's pending work went with it)."""
        out: list[Output] = []
        dirty, self._dirty, self._since = self._dirty, {}, 0
        for device_id in dirty:
            miner = self.miners.get(device_id)
            if miner is not None:
                out += miner.decide()
        return out

    def get(self, utterance: str, device_id: str) -> dict[str, Any] | None:
        miner = self.miners.get(device_id)
        return None if miner is None else miner.get(utterance)

    def state_sizes(self) -> dict[str, int]:
        sizes = {"devices": len(self.miners), "states": 0, "transitions": 0,
                 "support_pairs": 0, "published": 0}
        for miner in self.miners.values():
            for k, v in miner.state_sizes().items():
                sizes[k] += v
        return sizes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot (``decide()`` first: pending work is not part of it)."""
        if self._since:
            raise RuntimeError("pending rewrite decisions: call decide() before to_dict()")
        return {"config": dataclasses.asdict(self.config), "max_devices": self.max_devices,
                "devices": [m.to_dict(with_config=False) for m in self.miners.values()],
                "evictions": self.evictions}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any],
                  stats: EngineStats | None = None) -> PersonalRewriteMiner:
        pm = cls(RewriteConfig(**data["config"]), data["max_devices"], stats)
        for d in data["devices"]:  # one shared config object, not one per device
            pm.restore(d["device_id"], d)
        pm.evictions = data["evictions"]
        return pm


class RewriteLayers:
    """Global and personal layers fed together; ``lookup`` applies their precedence."""

    def __init__(self, global_config: RewriteConfig | None = None,
                 personal_config: RewriteConfig | None = None, max_devices: int = 10_000,
                 stats: EngineStats | None = None) -> None:
        self.global_ = RewriteMiner(global_config, "global", None, stats)
        self.personal = PersonalRewriteMiner(personal_config, max_devices, stats)

    @classmethod
    def from_settings(cls, settings: Settings,
                      stats: EngineStats | None = None) -> RewriteLayers:
        return cls(RewriteConfig.from_settings(settings, "global"),
                   RewriteConfig.from_settings(settings, "personal"),
                   settings.rewrite_personal_max_devices, stats)

    def learn_one(self, chain: Mapping[str, Any]) -> list[Output]:
        utts, success, ts = parse_chain(chain)  # once for both layers
        return (self.global_.learn_parsed(utts, success, ts)
                + self.personal.learn_parsed(chain["device_id"], utts, success, ts))

    def decide(self) -> list[Output]:
        """Both layers' pending decisions (``decide_every`` > 1): at the end of a stream or
        batch, and before ``to_dict``."""
        return self.global_.decide() + self.personal.decide()

    def lookup(self, utterance: str, device_id: str | None = None) -> dict[str, Any] | None:
        """The rewrite to apply: the device's own published rewrite if any, else the global one.

        A personal rewrite is only published with ``min_support`` of the device's own chains,
        so one odd session does not override the global layer.
        """
        if device_id is not None:
            rec = self.personal.get(utterance, device_id)
            if rec is not None:
                return rec
        return self.global_.get(utterance)

    def state_sizes(self) -> dict[str, dict[str, int]]:
        return {"global": self.global_.state_sizes(), "personal": self.personal.state_sizes()}

    def to_dict(self) -> dict[str, Any]:
        return {"global": self.global_.to_dict(), "personal": self.personal.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any],
                  stats: EngineStats | None = None) -> RewriteLayers:
        layers = cls(stats=stats)
        layers.global_ = RewriteMiner.from_dict(data["global"], stats)
        layers.personal = PersonalRewriteMiner.from_dict(data["personal"], stats)
        return layers
