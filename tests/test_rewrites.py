"""Rewrite mining, one miner: closed-form absorption probabilities, a generated population with a
known best rewrite, withdrawal, snapshots, the state bound and the state bookkeeping.
Layers: tests/test_rewrites_layers.py; batched decisions: tests/test_rewrites_batched.py."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import random
from fractions import Fraction

import pytest

from stream.markov import NO_COUNTS, NO_NAMES
from stream.records import REWRITE_TRIGGERS
from stream.rewrite_config import RewriteConfig
from stream.rewrites import RewriteMiner
from tests.rewrite_chains import BAD, CFG3, chain, check_bookkeeping, feed, population


def test_brief_example_closed_form() -> None:
    # u1 -> u2 twice, u1 -> FAILURE once, u2 -> SUCCESS twice:
    # P(s|u2) = 2/2 = 1; P(s|u1) = 2/3 * P(s|u2) + 1/3 * 0 = 2/3. The gain is taken against
    # u1's own turn-level success: none of its 3 uses succeeded there (0).
    m = RewriteMiner(RewriteConfig(min_support=2))
    outs = feed(m, [chain(["u1", "u2"], True, 1), chain(["u1"], False, 2),
                    chain(["u1", "u2"], True, 3)])
    p = m.solve(["u1"])
    assert p["u1"] == pytest.approx(2 / 3) and p["u2"] == pytest.approx(1.0)
    assert [(o.stream, o.key) for o in outs] == [(REWRITE_TRIGGERS, "global:u1")]
    assert outs[0].record == {
        "utterance": "u1", "rewrite": "u2", "layer": "global", "device_id": None,
        "p_success": 1.0, "p_success_original": 0.0, "support": 2, "ts": 3}


def test_cycle_closed_form_prior_and_discount() -> None:
    chains = ([chain(["a", "b"], True)] * 2 + [chain(["a"], False), chain(["b"], False),
              chain(["a", "c"], True), chain(["c"], True), chain(["b", "a", "b"], True)])
    # Counts: a -> b 3, a -> c 1, a -> F 1 | b -> a 1, b -> S 3, b -> F 1 | c -> S 2.
    # P(a) = 3/5 P(b) + 1/5 P(c); P(b) = 1/5 P(a) + 3/5; P(c) = 1
    #   => P(a) = 3/25 P(a) + 14/25 => P(a) = 14/22 = 7/11, P(b) = 8/11.
    m = RewriteMiner()
    feed(m, chains)
    p = m.solve(["a"])
    assert p == pytest.approx({"a": 7 / 11, "b": 8 / 11, "c": 1.0})
    assert m.states["a"].support == {"b": 3, "c": 1}  # [b, a, b] counts once for (a, b)
    assert m.states["b"].support == {"a": 1}
    # prior 1 (0.5 S + 0.5 F per row): rows total 6, 6, 3:
    # P(c) = 2.5/3; P(b) = 1/6 P(a) + 3.5/6; P(a) = 3/6 P(b) + 1/6 P(c) + 0.5/6.
    m = RewriteMiner(RewriteConfig(prior=1.0))
    feed(m, chains)
    pc = Fraction(5, 6)
    pa = (Fraction(3, 6) * Fraction(7, 12) + Fraction(1, 6) * pc + Fraction(1, 12)) / (
        1 - Fraction(3, 6) * Fraction(1, 6))
    pb = Fraction(1, 6) * pa + Fraction(7, 12)
    assert m.solve(["a"]) == pytest.approx({"a": float(pa), "b": float(pb), "c": float(pc)})
    # discount g: every transition is worth g: P(u1) = g * 2/3 * P(u2).
    m = RewriteMiner(RewriteConfig(discount=0.5))
    feed(m, [chain(["u1", "u2"], True)] * 2 + [chain(["u1"], False)])
    assert m.solve(["u1"]) == pytest.approx({"u1": 1 / 3, "u2": 1.0})


def test_persistent_users_do_not_hide_a_rewrite() -> None:
    # Users of u always rephrase to r and then succeed: P(s|u) = P(s|r) = 1 by absorption,
    # but every use of u failed: its turn-level success is 0, the gain 1.
    chains = [chain(["u", "r"], True, i) for i in range(5)]
    for config in (RewriteConfig(), RewriteConfig(discount=0.5)):
        miner = RewriteMiner(config)
        feed(miner, chains)
        rec = miner.get("u")
        assert rec is not None and rec["rewrite"] == "r" and rec["p_success_original"] == 0.0


# -- pooled support: fixes spread over several good phrasings ------------------------------------
def spread_fixes(extra: list[dict]) -> list[dict]:
    """A broken "u" (6 lone failures) fixed 3 times with "g1"; "b" absorbs well (persistent
    users always rephrase it to "g2") but fails at first try 8 times out of 10; "u" was
    followed by "b" in 2 successful chains. The good phrasings succeed alone as well."""
    return ([chain(["u"], False, i) for i in range(6)]
            + [chain(["g1"], True, 10 + i) for i in range(5)]
            + [chain(["b", "g2"], True, 20 + i) for i in range(8)]
            + [chain(["u", "g1"], True, 30 + i) for i in range(3)]
            + [chain(["u", "b"], True, 40 + i) for i in range(2)] + extra)


def test_pooled_support_publishes_the_best_of_several_fixes() -> None:
    # No rewrite of "u" has 5 chains. "b" recurs but does not work at first try, so it adds
    # nothing to the pool: g1's 3 chains alone are not enough.
    m = RewriteMiner()
    feed(m, spread_fixes([]))
    assert m.states["u"].support == {"g1": 3, "b": 2} and m.get("u") is None
    # Two chains to another phrasing that worked both times: 5 chains together, but 2 plays
    # do not show that "g3" works (the low end of its success interval is under 0.6) ...
    more = [chain(["u", "g3"], True, 50 + i) for i in range(2)]
    assert feed(m, more) == [] and m.get("u") is None
    # ... 10 more plays of it do: "u" is re-decided (it leads to "g3") and gets the best.
    more += [chain(["g3"], True, 60 + i) for i in range(10)]
    outs = feed(m, more[2:])
    rec = m.get("u")
    assert rec is not None and (rec["rewrite"], rec["support"]) == ("g1", 3)
    assert [o.key for o in outs] == ["global:u"]
    check_bookkeeping(m)
    # A rewrite seen once is no evidence of its own (it could be a follow-up), nor is it
    # pooled; and with pool_min_support at min_support nothing is pooled at all.
    once = [chain(["u", f"g{i}"], True, 80 + i) for i in range(3, 6)]
    once += [chain([f"g{i}"], True, 90 + i) for i in range(3, 6) for _ in range(10)]
    for config, chains in ((RewriteConfig(), once), (RewriteConfig(pool_min_support=5), more)):
        m = RewriteMiner(config)
        feed(m, spread_fixes(chains))
        assert m.get("u") is None


# -- a generated population with a known best rewrite ---------------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_population_finds_the_best_rewrite(seed: int) -> None:
    chains, best = population(seed)
    m = RewriteMiner()
    outs = feed(m, chains)
    for u in BAD:
        rec = m.get(u)
        assert rec is not None and rec["rewrite"] == best[u], (u, rec)
        assert rec["p_success"] >= 0.6 and rec["p_success"] - rec["p_success_original"] >= 0.2
    # Good utterances get none; the bad rewrite may itself be rewritten to the best one.
    assert set(BAD) <= set(m.published) <= set(BAD) | {f"{u} video" for u in BAD}
    for u in BAD:
        assert (m.get(f"{u} video") or {"rewrite": best[u]})["rewrite"] == best[u]
    published = {o.record["rewrite"] for o in outs if o.record["rewrite"]}
    assert not any(r.endswith(" rare") for r in published)  # support 2: never
    # With support 3 a bad rewrite lucky in its first few uses can be published for a while
    # (seed 2: 3 of 3 looked fine); with 5 it never was in 40 seeds (see the report).
    strict = RewriteMiner(RewriteConfig(min_support=5))
    outs = feed(strict, chains)
    assert {o.record["rewrite"] for o in outs if o.record["rewrite"]} == set(best.values())
    assert all(strict.get(u)["rewrite"] == best[u] for u in BAD)
    assert all(o.key == f"global:{o.record['utterance']}" for o in outs)


def test_population_is_deterministic_and_snapshot_continues() -> None:
    chains, _ = population(7, 2000)
    a = RewriteMiner()
    outs_a = feed(a, chains)
    b = RewriteMiner()
    outs_b = feed(b, chains[:1000])
    b = RewriteMiner.from_dict(json.loads(json.dumps(b.to_dict())))
    outs_b += feed(b, chains[1000:])
    assert outs_a == outs_b
    assert a.to_dict() == b.to_dict()
    assert a.state_sizes() == b.state_sizes()


# -- withdrawal, a better rewrite, the state bound, bad input --------------------------------------
def test_withdrawal_when_the_rewrite_starts_failing() -> None:
    m = RewriteMiner(CFG3)
    outs = feed(m, [chain(["u", "r"], True, i) for i in range(4)]
                + [chain(["u"], False, i) for i in range(4, 8)])
    assert [o.record["rewrite"] for o in outs] == ["r"]
    # The rewrite target breaks: users now give up after it.
    later = feed(m, [chain(["u", "r"], False, 100 + i) for i in range(10)])
    assert [(o.key, o.record["rewrite"]) for o in later] == [("global:u", None)]
    assert later[0].record["p_success"] is None and m.get("u") is None
    assert 100 < later[0].record["ts"] < 110
    # ... and recovers: published again (a change from null).
    again = feed(m, [chain(["u", "r"] if i % 2 else ["u"], i % 2 == 1, 200 + i)
                     for i in range(40)])
    assert [o.record["rewrite"] for o in again] == ["r"]


def test_change_to_a_better_rewrite_is_emitted_once() -> None:
    m = RewriteMiner()
    outs = feed(m, [chain(["u", "r1"], True, i) for i in range(3)]
                + [chain(["u"], False, i) for i in range(3, 13)]
                + [chain(["u", "r1"], i % 2 == 0, 10 + i) for i in range(6)])
    assert [o.record["rewrite"] for o in outs] == ["r1"]
    outs = feed(m, [chain(["u", "r2"], True, 50 + i) for i in range(5)])
    assert [o.record["rewrite"] for o in outs] == ["r2"]


def test_eviction_bound_and_withdrawal() -> None:
    m = RewriteMiner(RewriteConfig(min_support=3, max_states=50))
    feed(m, [chain(["u", "r"], True, i) for i in range(3)] + [chain(["u"], False, 3)] * 3)
    assert m.get("u")["rewrite"] == "r"
    outs = feed(m, [chain([f"x{i}", f"y{i}"], True, 10 + i) for i in range(100)])
    assert len(m.states) <= 50 and m.evictions == 152
    assert [(o.key, o.record["rewrite"]) for o in outs] == [("global:u", None)]
    sizes = m.state_sizes()
    assert sizes["states"] == 50 and sizes["published"] == 0
    # No dangling references to evicted states.
    for st in m.states.values():
        assert set(st.out) | set(st.support) | st.preds | st.supporters <= set(m.states)



def test_neighbourhood_cap_and_bad_input() -> None:
    m = RewriteMiner(RewriteConfig(max_neighbourhood=5))
    feed(m, [chain([f"s{i}" for i in range(20)], True)])
    assert m.neighbourhood(["s0"]) == ["s0", "s1", "s2", "s3", "s4"]
    assert m.solve(["s0"]) == {}  # no absorption reachable inside the 5 states
    m.learn_one(chain(["s2"], False))
    assert m.solve(["s0"]) == {"s0": 0.0, "s1": 0.0, "s2": 0.0}
    with pytest.raises(ValueError):
        m.learn_one({"device_id": "d", "utterances": [], "outcome": "success", "ts": 1})
    with pytest.raises(ValueError):
        m.learn_one({"device_id": "d", "utterances": ["a"], "outcome": "meh", "ts": 1})
    with pytest.raises(ValueError):
        m.learn_one({"utterances": ["a"], "outcome": "success", "ts": 1})  # no device_id
    with pytest.raises(ValueError):
        RewriteConfig(discount=0.0)


# -- state bookkeeping: lazily created containers, the O(1) candidate count ----------------------
@pytest.mark.parametrize("min_support", [1, 2, 3])
def test_candidate_count_matches_brute_force(min_support: int) -> None:
    rng = random.Random(min_support)
    vocab = [f"u{i}" for i in range(30)]
    m = RewriteMiner(RewriteConfig(min_support=min_support, max_states=20, min_gain=0.05))
    for i in range(600):
        utts = [rng.choice(vocab[:8] if rng.random() < 0.6 else vocab)
                for _ in range(rng.choice([1, 1, 2, 3, 4]))]
        m.learn_one(chain(utts, rng.random() < 0.5, i))
        check_bookkeeping(m)
        if i % 150 == 149:  # a restored miner carries on with the same counts and decisions
            restored = RewriteMiner.from_dict(json.loads(json.dumps(m.to_dict())))
            check_bookkeeping(restored)
            assert restored.to_dict() == m.to_dict()
            m = restored
    assert m.evictions > 100 and m.published  # evictions and decisions were exercised


def test_from_dict_with_another_min_support_recounts() -> None:
    m = RewriteMiner(RewriteConfig(min_support=2))
    feed(m, [chain(["a", "b"], True, i) for i in range(3)] + [chain(["a", "c"], True, 9)])
    assert m.states["a"].strong == 3  # pooled support: "b"'s 3 chains ("c" has too few)
    restored = RewriteMiner.from_dict(m.to_dict(), config=RewriteConfig(min_support=1))
    assert restored.states["a"].strong == 4
    check_bookkeeping(restored)


def test_containers_are_created_lazily() -> None:
    m = RewriteMiner(RewriteConfig(max_states=3))
    feed(m, [chain(["once"], True, 1)])
    st = m.states["once"]
    assert (st.out, st.support, st.preds, st.supporters) == ({}, {}, set(), set())
    assert st.out is NO_COUNTS and st.support is NO_COUNTS
    assert st.preds is NO_NAMES and st.supporters is NO_NAMES
    with pytest.raises(TypeError):  # the shared sentinel can never be written to
        st.out["x"] = 1
    feed(m, [chain(["a", "b"], False, 2)])
    a, b = m.states["a"], m.states["b"]
    assert a.out == {"b": 1} and a.support == {"b": 1} and a.preds is NO_NAMES
    assert b.preds == {"a"} and b.supporters == {"a"} and b.out is NO_COUNTS
    # Evicting "a" (least recently seen once "c" and "d" come) empties b's reverse links:
    # back to the sentinels rather than empty real sets.
    feed(m, [chain(["c"], True, 3), chain(["b", "d"], True, 4)])
    assert "a" not in m.states and m.states["b"].preds is NO_NAMES
    assert m.states["b"].supporters is NO_NAMES
    check_bookkeeping(m)
    # Snapshots hold plain JSON objects; pickling and copying keep the sentinels shared.
    assert json.loads(json.dumps(m.to_dict())) == m.to_dict()
    for copied in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert copied.states["c"].out is NO_COUNTS and copied.states["c"].preds is NO_NAMES
        assert copied.to_dict() == m.to_dict()
        check_bookkeeping(copied)


def test_snapshot_format_unchanged() -> None:
    # A snapshot as written before the containers were lazy (every state with its own, maybe
    # empty, dicts) loads, and is written back the same way.
    snapshot = {"layer": "global", "device_id": None, "evictions": 0, "published": {},
                "config": dataclasses.asdict(RewriteConfig(min_support=2)),
                "states": [["a", {"b": 2}, 0, 1, {"b": 2}], ["b", {}, 2, 0, {}],
                           ["c", {}, 1, 0, {}]]}
    m = RewriteMiner.from_dict(snapshot)
    assert m.to_dict() == snapshot and m.states["c"].out is NO_COUNTS
    check_bookkeeping(m)
    outs = feed(m, [chain(["a", "b"], True, 5)])
    assert [(o.key, o.record["rewrite"]) for o in outs] == [("global:a", "b")]
