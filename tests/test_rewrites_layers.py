"""Rewrite layers: personal-vs-global precedence, the personal layer's support and device bound,
snapshots and input checks."""

from __future__ import annotations

import json

import pytest

from stream.rewrite_layers import PersonalRewriteMiner, RewriteLayers
from tests.rewrite_chains import CFG3, PERSONAL3, WILK, chain, feed, wilkerson_chains


def test_personal_layer_wins_over_global() -> None:
    layers = RewriteLayers(CFG3, PERSONAL3)
    outs = feed(layers, wilkerson_chains())
    assert layers.lookup(WILK)["rewrite"] == f"{WILK} washington"
    assert layers.lookup(WILK, "g0")["rewrite"] == f"{WILK} washington"  # no personal rewrite
    rec = layers.lookup("Weather in Wilkerson?", "home")
    assert rec["rewrite"] == f"{WILK} california" and rec["layer"] == "personal"
    assert rec["device_id"] == "home" and rec["support"] == 3
    assert f"personal:home:{WILK}" in {o.key for o in outs}
    # Global statistics still prefer Washington although "home" fed them California.
    assert layers.global_.get(WILK)["rewrite"] == f"{WILK} washington"


def test_personal_needs_support() -> None:
    layers = RewriteLayers()
    feed(layers, wilkerson_chains()[:40] + [chain([WILK, f"{WILK} california"], True, 99, "x"),
                                            chain([WILK], False, 100, "x")])
    assert layers.lookup(WILK, "x")["rewrite"] == f"{WILK} washington"


def test_personal_devices_are_bounded() -> None:
    pm = PersonalRewriteMiner(PERSONAL3, max_devices=3)
    outs = feed(pm, [chain(["u", "r"], True, i, "a") for i in range(3)]
                + [chain(["u"], False, 3, "a")] * 3)
    assert pm.get("u", "a")["rewrite"] == "r"
    outs = feed(pm, [chain(["v"], True, 10 + i, f"b{i}") for i in range(3)])
    assert pm.get("u", "a") is None and pm.evictions == 1
    assert [(o.key, o.record["rewrite"]) for o in outs] == [("personal:a:u", None)]
    assert pm.state_sizes()["devices"] == 3


def test_layers_snapshot_round_trip() -> None:
    layers = RewriteLayers()
    chains = wilkerson_chains()
    feed(layers, chains[:30])
    restored = RewriteLayers.from_dict(json.loads(json.dumps(layers.to_dict())))
    assert feed(restored, chains[30:]) == feed(layers, chains[30:])
    assert restored.to_dict() == layers.to_dict()
    assert restored.lookup(WILK, "home") == layers.lookup(WILK, "home")


def test_layers_reject_bad_chains_before_learning() -> None:
    layers = RewriteLayers()
    with pytest.raises(ValueError):
        layers.learn_one({"device_id": "d", "utterances": ["a", 3], "outcome": "success",
                          "ts": 1})
    assert layers.state_sizes()["global"]["states"] == 0
    assert layers.state_sizes()["personal"]["devices"] == 0
