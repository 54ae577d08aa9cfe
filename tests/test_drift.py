"""Defect-rate drift alerts: a jump is reported once with the right rates, stationary keys never."""

from __future__ import annotations

import random

import pytest
from river.drift import ADWIN

from stream.drift import DefectRateDrift
from stream.records import DEFECT_RATE_ALERTS


def play(d: DefectRateDrift, key: str, rates: list[tuple[int, float]], rng: random.Random,
         t0: int = 0, key_type: str = "utterance") -> list[dict]:
    alerts, ts = [], t0
    for n, rate in rates:
        for _ in range(n):
            ts += 1_000
            for o in d.update(key_type, key, rng.random() < rate, ts):
                assert o.stream == DEFECT_RATE_ALERTS
                assert o.key == f"{key_type}:{key}:{o.record['ts']}"
                alerts.append(o.record)
    return alerts


@pytest.mark.parametrize("seed", range(5))
def test_jump_gives_one_alert_with_old_and_new_rates(seed: int) -> None:
    d = DefectRateDrift()
    alerts = play(d, "play jazz", [(1500, 0.1), (1500, 0.6)], random.Random(seed))
    assert len(alerts) == 1
    a = alerts[0]
    assert a["key_type"] == "utterance" and a["key"] == "play jazz" and a["direction"] == "up"
    assert a["old_rate"] == pytest.approx(0.1, abs=0.05)
    assert a["new_rate"] == pytest.approx(0.6, abs=0.15)
    jump_ts = 1500 * 1_000
    assert jump_ts < a["detected_ts"] < a["ts"] <= jump_ts + 200 * 1_000  # within 200 plays
    assert a["n_new"] == 50 and a["n_old"] > 500


def test_drop_is_reported_down() -> None:
    d = DefectRateDrift()
    alerts = play(d, "PlayMusic", [(1000, 0.5), (1000, 0.05)], random.Random(11),
                  key_type="intent")
    assert [a["direction"] for a in alerts] == ["down"]
    assert alerts[0]["new_rate"] < 0.2 < 0.35 < alerts[0]["old_rate"]


def test_stationary_keys_never_alert() -> None:
    rng = random.Random(7)
    d = DefectRateDrift()
    for k, rate in enumerate([0.02, 0.1, 0.3, 0.5, 0.8]):
        assert play(d, f"key {k}", [(5000, rate)], rng) == []


def test_warm_up_and_bounds() -> None:
    d = DefectRateDrift(min_plays=30, max_keys=3, max_candidates=5)
    rng = random.Random(1)
    for i in range(10):  # rare keys only warm up, within max_candidates
        play(d, f"rare {i}", [(5, 0.5)], rng)
    assert d.state_sizes() == {"tracked": 0, "warming": 5}
    for i in range(5):
        play(d, f"busy {i}", [(40, 0.2)], rng)
    assert d.state_sizes()["tracked"] == 3 and d.evictions == 2
    assert set(d.tracked) == {("utterance", f"busy {i}") for i in (2, 3, 4)}


def test_learn_one_reads_rate_updates() -> None:
    d = DefectRateDrift(min_plays=1)
    assert d.learn_one({"key_type": "intent", "key": "PlayMusic", "defective": True,
                        "ts": 5, "event_id": "e1"}) == []
    assert d.state_sizes() == {"tracked": 1, "warming": 0}


def test_deterministic() -> None:
    runs = [play(DefectRateDrift(), "k", [(800, 0.2), (800, 0.7)], random.Random(3))
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 1


def test_old_rate_is_exactly_the_dropped_part_of_the_window() -> None:
    """Against ADWIN's public mean and width read around each update (the step itself reads
    the window's sum instead, which must give bit-identical rates)."""
    rng, d = random.Random(5), DefectRateDrift(min_plays=1, confirm_plays=5)
    ref, k, detections = ADWIN(delta=d.delta), ("intent", "PlayMusic"), 0
    for i in range(20_000):
        x = rng.random() < (0.1 if (i // 1_500) % 2 == 0 else 0.7)
        was_pending = k in d.tracked and d.tracked[k].pending is not None
        mean, width = ref.estimation, ref.width
        ref.update(float(x))
        d.update(*k, x, i)
        n_old = width + 1 - ref.width
        if ref.drift_detected and not was_pending and n_old > 0:
            old_rate = (mean * width + x - ref.estimation * ref.width) / n_old
            assert d.tracked[k].pending == (old_rate, n_old, i)
            detections += 1
    assert detections >= 5
