"""The fast interval path gives exactly what the scipy ufunc gives (records stay byte-identical)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import betaincinv as betaincinv_ufunc

from stream.rates import (
    DefectRateTracker,
    RateStage,
    beta_interval,
    posterior_mean,
    record_estimate,
)


def ufunc_interval(defects: np.ndarray, successes: np.ndarray,
                   level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the ufunc, as ``beta_interval`` called it before the scalar path."""
    a, b = 1.0 + defects, 1.0 + successes
    tail = (1.0 - level) / 2.0
    return betaincinv_ufunc(a, b, tail), betaincinv_ufunc(a, b, 1.0 - tail)


def grid_pairs() -> tuple[np.ndarray, np.ndarray]:
    """Every small pair (most keys), and random large ones (busy intent/domain keys)."""
    defects, successes = np.meshgrid(np.arange(120), np.arange(600), indexing="ij")
    rng = np.random.default_rng(8)
    big_d = rng.integers(0, 300_000, 3_000)
    big_s = rng.integers(0, 3_000_000, 3_000)
    return (np.concatenate([defects.ravel(), big_d, big_s // 50]),
            np.concatenate([successes.ravel(), big_s, big_d // 50]))


def test_beta_interval_is_bit_identical_to_the_ufunc() -> None:
    defects, successes = grid_pairs()
    want_low, want_high = ufunc_interval(defects, successes)
    got = [beta_interval(int(d), int(s)) for d, s in zip(defects, successes, strict=True)]
    low, high = np.array(got).T
    # Exact equality, not approx: the rounded record fields must not change at any pair.
    assert np.array_equal(low, want_low) and np.array_equal(high, want_high)


@pytest.mark.parametrize("level", [0.5, 0.9, 0.99])
def test_other_levels_are_bit_identical(level: float) -> None:
    defects, successes = np.arange(40), np.arange(0, 4_000, 100)
    want_low, want_high = ufunc_interval(defects, successes, level)
    got = np.array([beta_interval(int(d), int(s), level)
                    for d, s in zip(defects, successes, strict=True)]).T
    assert np.array_equal(got[0], want_low) and np.array_equal(got[1], want_high)


def test_record_estimate_is_the_rounded_tracker_estimate() -> None:
    record_estimate.cache_clear()
    for defects, successes in [(0, 0), (1, 3), (7, 0), (250, 9_750), (40_000, 1_000_000)]:
        t = DefectRateTracker(defects + successes, defects)
        low, high = ufunc_interval(np.array(defects), np.array(successes))
        want = (round(t.get(), 6), round(float(low), 6), round(float(high), 6))
        assert record_estimate(defects, successes) == want  # computed
        assert record_estimate(defects, successes) == want  # cached
        rec = RateStage.record("intent", "PlayMusic", t)
        assert (rec["rate"], rec["low"], rec["high"]) == want
    assert posterior_mean(1, 4) == pytest.approx(1 / 3)


def test_apply_without_estimate_then_estimate_per_key() -> None:
    updates = [{"key_type": kt, "key": k, "defective": i % 3 == 0, "ts": 1_000 + i,
                "event_id": f"e{i}"}
               for i, (kt, k) in enumerate([("intent", "PlayMusic"), ("utterance", "play jazz")]
                                           * 40)]
    eager, batched = RateStage(), RateStage()
    eager_out = [out for u in updates for out in eager.apply(u)]
    assert [out for u in updates for out in batched.apply(u, estimate=False)] == [
        out for out in eager_out if out.stream != "defect-rates"]
    last = {out.key: out for out in eager_out if out.stream == "defect-rates"}
    assert {k: batched.estimate(*k.split(":", 1)) for k in last} == last
    assert batched.estimate("intent", "Unknown") is None
