"""The real-phrasings population generator: deterministic, valid schema v1, consistent truth,
disjoint splits, attribution shipped with the data."""

from __future__ import annotations

from pathlib import Path

import orjson

from stream.datasets import phrasings
from stream.datasets.phrasings import Population, expected_rewrites
from stream.engine import FeedbackEngine
from stream.failure import FAILURE_POINTS
from stream.records import DEAD_LETTER
from tests.scale import FULL
from tests.test_pairs import population_pairs, population_replay

PACKAGE = Path(phrasings.__file__).parent


def test_same_seed_same_stream_other_seed_other_stream():
    a = list(phrasings.generate(2_000, 60, seed=4))
    assert a == list(phrasings.generate(2_000, 60, seed=4))
    assert a != list(phrasings.generate(2_000, 60, seed=5))


def test_splits_use_disjoint_phrasings():
    texts = {split: {p.text for g in Population(5, seed=1, split=split).goals
                     for p in g.phrasings} for split in ("a", "b")}
    assert texts["a"] and texts["b"] and not texts["a"] & texts["b"]


def test_events_are_valid_and_truth_follows_the_window_rules():
    # Quick: the population stream tests/test_pairs.py replays (its replay is shared).
    if FULL:
        pairs = list(phrasings.generate(6_000, 150, seed=2))
        eng = FeedbackEngine()
        outputs = [o for line, _ in pairs for o in eng.process(line)]
    else:
        pairs, outputs = population_pairs(), population_replay(False)[0]
    assert [o for o in outputs if o.stream == DEAD_LETTER] == []
    turns = {t["event_id"]: (orjson.loads(line), t) for line, t in pairs if "behaviour" in t}
    points = set()
    for ev, t in turns.values():
        assert t["defective"] == bool(t["signals"])
        if t["failure_point"]:
            points.add(t["failure_point"])
            assert t["failed"]
        if t["rephrase_of"]:
            orig, _ = turns[t["rephrase_of"]]
            assert orig["device_id"] == ev["device_id"]
            assert 0 < ev["ts"] - orig["ts"] <= 45_000
            assert orig["event_id"] != ev["event_id"]
    assert points == set(FAILURE_POINTS) - {"unknown"}
    behaviours = {t["behaviour"] for _, t in turns.values()}
    assert {"request", "rephrase", "small_talk", "related", "out_of_scope",
            "false_wake", "stop"} <= behaviours


def test_personal_devices_have_their_own_fix_unlike_the_global_best():
    pop = Population(400, seed=3)
    expected = expected_rewrites(pop)
    assert expected["personal"]
    for (_, habit), fix in expected["personal"].items():
        goal, _ = expected["success"][habit]
        assert fix != expected["best"][goal]


def test_attribution_ships_with_the_data():
    assert (PACKAGE / "clinc150-requests.json").exists()
    text = (PACKAGE / "ATTRIBUTION.md").read_text()
    assert "CC BY 3.0" in text and "Larson" in text
