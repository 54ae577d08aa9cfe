"""Rewrite mining: closed-form absorption probabilities, a generated population with a known best
rewrite, personal-vs-global precedence, withdrawal, snapshots and the state bound."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import random
from fractions import Fraction
from pathlib import Path

import orjson
import pytest

from stream.engine import FeedbackEngine
from stream.markov import NO_COUNTS, NO_NAMES
from stream.records import CHAINS, REWRITE_TRIGGERS, Output
from stream.rewrite_layers import PersonalRewriteMiner, RewriteLayers
from stream.rewrites import RewriteConfig, RewriteMiner
from stream.settings import Settings
from topologies.processors import GlobalRewriteProcessor, Message, PersonalRewrites
from topologies.settings import KafkaSettings

WILK = "weather in wilkerson"
# Small populations: 3 supporting chains publish (the settings' default is 5).
CFG3 = RewriteConfig(min_support=3)
PERSONAL3 = RewriteConfig(min_support=3, max_states=1_000)


def chain(utts: list[str], ok: bool, ts: int = 0, device: str = "d0") -> dict:
    return {"device_id": device, "event_ids": [f"e{i}" for i in range(len(utts))],
            "utterances": utts, "outcome": "success" if ok else "failure", "ts": ts}


def feed(miner, chains: list[dict]) -> list:
    return [o for c in chains for o in miner.learn_one(c)]


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


# -- a generated population with a known best rewrite ---------------------------------------------
BAD = [f"play thing {i}" for i in range(8)]


def population(seed: int, n: int = 3000) -> tuple[list[dict], dict[str, str]]:
    """Chains over bad utterances with a known best rewrite, weak rewrites and good utterances.

    Each bad utterance u fails 90% of the time; users then rephrase to the true best rewrite
    (succeeds 90%), to a bad rewrite (succeeds 10%, sometimes rephrased again to the best:
    P(success) = 0.28), to a rare rewrite (always succeeds but seen at most twice), or give up. Good
    utterances succeed 95% and are occasionally rephrased to an equally good variant.
    """
    rng = random.Random(seed)
    best = {u: f"{u} audiobook" for u in BAD}
    rare_used: dict[str, int] = {}
    out = []
    for i in range(n):
        dev = f"d{rng.randrange(200)}"
        if rng.random() < 0.4:
            g = f"good request {rng.randrange(10)}"
            if rng.random() < 0.95:
                out.append(chain([g], True, i, dev))
            else:
                out.append(chain([g, g + " please now"], rng.random() < 0.95, i, dev))
            continue
        u = rng.choice(BAD)
        if rng.random() < 0.1:
            out.append(chain([u], True, i, dev))
            continue
        x = rng.random()
        if x < 0.45:
            utts, ok = [u, best[u]], rng.random() < 0.9
        elif x < 0.6:
            weak, y = f"{u} video", rng.random()
            if y < 0.1:
                utts, ok = [u, weak], True
            elif y < 0.3:
                utts, ok = [u, weak, best[u]], rng.random() < 0.9
            else:
                utts, ok = [u, weak], False
        elif x < 0.62 and rare_used.get(u, 0) < 2:
            rare_used[u] = rare_used.get(u, 0) + 1
            utts, ok = [u, f"{u} rare"], True
        else:
            utts, ok = [u], False
        out.append(chain(utts, ok, i, dev))
    return out, best


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


# -- layers ---------------------------------------------------------------------------------------
def wilkerson_chains() -> list[dict]:
    chains = []
    for i in range(40):  # most devices mean Washington; some give up
        dev = f"g{i}"
        if i % 4 == 3:
            chains.append(chain([WILK], False, i, dev))
        else:
            chains.append(chain([WILK, f"{WILK} washington"], True, i, dev))
    # One device means California (and once gave up).
    for j, ok in enumerate([True, True, False, True]):
        utts = [WILK, f"{WILK} california"] if ok else [WILK]
        chains.append(chain(utts, ok, 100 + j, "home"))
    return chains


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
def brute_candidate(m: RewriteMiner, u: str) -> bool:
    min_support = m.config.min_support
    return u in m.published or any(c >= min_support for c in m.states[u].support.values())


def check_bookkeeping(m: RewriteMiner) -> None:
    """The per-state count of strong support entries equals a recount, reverse links mirror
    the forward ones, and nothing holds an empty real container (it would cost memory)."""
    preds: dict[str, set[str]] = {u: set() for u in m.states}
    supporters: dict[str, set[str]] = {u: set() for u in m.states}
    for u, st in m.states.items():
        assert st.strong == sum(c >= m.config.min_support for c in st.support.values())
        assert m._is_candidate(u) == brute_candidate(m, u)
        for v in st.out:
            preds[v].add(u)
        for r in st.support:
            supporters[r].add(u)
    for u, st in m.states.items():
        assert st.preds == preds[u] and st.supporters == supporters[u], u
        for name, empty in (("out", NO_COUNTS), ("support", NO_COUNTS), ("preds", NO_NAMES),
                            ("supporters", NO_NAMES)):
            value = getattr(st, name)
            assert value or value is empty, (u, name)


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
    assert m.states["a"].strong == 1
    restored = RewriteMiner.from_dict(m.to_dict(), config=RewriteConfig(min_support=1))
    assert restored.states["a"].strong == 2
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


def test_layers_reject_bad_chains_before_learning() -> None:
    layers = RewriteLayers()
    with pytest.raises(ValueError):
        layers.learn_one({"device_id": "d", "utterances": ["a", 3], "outcome": "success",
                          "ts": 1})
    assert layers.state_sizes()["global"]["states"] == 0
    assert layers.state_sizes()["personal"]["devices"] == 0


# -- batched decisions (decide_every > 1) --------------------------------------------------------
def redecide_all(m: RewriteMiner) -> list:
    """Re-decide every utterance alone against the current counts."""
    out: list = []
    for u in list(m.states):
        m._decide(u, m.solve([u]), 0, out)
    return out


def decisions(m: RewriteMiner) -> dict[str, tuple]:
    return {u: (r["rewrite"], r["p_success"], r["p_success_original"], r["support"])
            for u, r in m.published.items()}


def count_solves(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    solve = RewriteMiner.solve

    def counted(self: RewriteMiner, sources: list[str]) -> dict[str, float]:
        calls[0] += 1
        return solve(self, sources)

    monkeypatch.setattr(RewriteMiner, "solve", counted)
    return calls


def check_published(m: RewriteMiner) -> None:
    """Published rewrites only between tracked utterances, with the support they need."""
    for u, rec in m.published.items():
        assert u in m.states and rec["rewrite"] in m.states
        assert m.states[u].support[rec["rewrite"]] >= m.config.min_support


def test_decide_every_1_and_explicit_decide_change_nothing() -> None:
    chains, _ = population(7, 2000)
    a, b = RewriteMiner(), RewriteMiner()
    outs_a = feed(a, chains)
    outs_b = []
    for c in chains:
        outs_b += b.learn_one(c)
        assert b.decide() == []
    assert outs_a == outs_b and a.to_dict() == b.to_dict()
    assert RewriteConfig().decide_every == 1
    layers, plain = RewriteLayers(), RewriteLayers()
    for c in wilkerson_chains():
        assert layers.learn_one(c) == plain.learn_one(c) and layers.decide() == []
    assert layers.to_dict() == plain.to_dict()
    with pytest.raises(ValueError):
        RewriteConfig(decide_every=0)


@pytest.mark.parametrize("n", [7, 100, 1000, 5000])
def test_batched_decisions_equal_a_full_redecision(n: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Exact when a decision depends on the counts only: no hysteresis (it makes a decision
    # depend on what was published before, i.e. on when decisions happened) and neighbourhoods
    # and affected-utterance searches that cover the whole graph (no cut depending on which
    # sources share a solve). Then every utterance a batch's chains can affect is re-decided
    # after it, and nothing else can have changed: the same records as a per-chain miner
    # whose every utterance was re-decided at the end.
    solves = count_solves(monkeypatch)
    for seed in (1, 2, 3):
        chains, best = population(seed)
        cfg = RewriteConfig(hysteresis=0.0, max_neighbourhood=256)
        ref = RewriteMiner(cfg)
        solves[0] = 0
        feed(ref, chains)
        per_chain_solves = solves[0]
        redecide_all(ref)
        m = RewriteMiner(dataclasses.replace(cfg, decide_every=n))
        solves[0] = 0
        outs = feed(m, chains)
        assert (len(outs) > 0) == (n < len(chains))  # every n chains on its own
        outs += m.decide()
        assert m._pending == {} and m._since == 0
        assert solves[0] < per_chain_solves / (3 if n >= 100 else 1.1), (solves, per_chain_solves)
        assert decisions(m) == decisions(ref) and set(BAD) <= set(m.published)
        assert all(m.get(u)["rewrite"] == best[u] for u in BAD)
        assert redecide_all(m) == []  # nothing was left stale
        # The triggers say the same as the published state (the last per key wins).
        last = {o.record["utterance"]: o.record["rewrite"] for o in outs}
        assert {u: r for u, r in last.items() if r} == {u: d[0] for u, d in decisions(m).items()}
    assert m.decide() == []


def test_batched_decisions_snapshot_contract() -> None:
    chains, _ = population(7, 2000)
    m = RewriteMiner(RewriteConfig(decide_every=300))
    outs = feed(m, chains[:1000])
    with pytest.raises(RuntimeError, match="decide"):
        m.to_dict()
    outs += m.decide()
    restored = RewriteMiner.from_dict(json.loads(json.dumps(m.to_dict())))
    assert restored.config.decide_every == 300
    # A restored miner decides at the same chains as one that carried on (decide() restarts
    # the count of chains).
    assert feed(restored, chains[1000:]) + restored.decide() == feed(m, chains[1000:]) + m.decide()
    assert restored.to_dict() == m.to_dict()
    # Snapshots of earlier versions have no decide_every: 1.
    old = m.to_dict()
    del old["config"]["decide_every"]
    assert RewriteMiner.from_dict(old).config.decide_every == 1


def test_batched_decisions_and_eviction() -> None:
    m = RewriteMiner(RewriteConfig(min_support=3, max_states=50, decide_every=1000))
    feed(m, [chain(["u", "r"], True, i) for i in range(3)] + [chain(["u"], False, 3)] * 3)
    assert m.get("u") is None  # pending
    assert [(o.key, o.record["rewrite"]) for o in m.decide()] == [("global:u", "r")]
    # Eviction still withdraws at once, not at the next decision.
    outs = feed(m, [chain(["u", "r"], True, 5)] + [chain([f"x{i}", f"y{i}"], True, 10 + i)
                                                    for i in range(100)])
    assert [(o.key, o.record["rewrite"], o.record["ts"]) for o in outs] == [
        ("global:u", None, 34)]
    assert m.get("u") is None and "u" not in m.states
    # The pending chains of evicted utterances are skipped.
    assert m.decide() == [] and m.published == {}
    check_bookkeeping(m)


@pytest.mark.parametrize("n", [1, 3, 50])
def test_batched_decisions_bookkeeping_under_eviction(n: int) -> None:
    rng = random.Random(n)
    vocab = [f"u{i}" for i in range(30)]
    m = RewriteMiner(RewriteConfig(min_support=2, max_states=20, min_gain=0.05, decide_every=n))
    published = 0
    for i in range(900):
        utts = [rng.choice(vocab[:8] if rng.random() < 0.6 else vocab)
                for _ in range(rng.choice([1, 1, 2, 3, 4]))]
        m.learn_one(chain(utts, rng.random() < 0.5, i))
        check_published(m)
        if i % 37 == 36:
            m.decide()
            check_bookkeeping(m)
            check_published(m)
            published += len(m.published)
    assert m.evictions > 100 and published  # evictions and decisions were exercised


def test_batched_layers_and_personal_count() -> None:
    chains = wilkerson_chains()
    plain = RewriteLayers(CFG3, PERSONAL3)
    feed(plain, chains)
    cfg = RewriteConfig(min_support=3, decide_every=10)
    layers = RewriteLayers(cfg, dataclasses.replace(cfg, max_states=1_000))
    outs = feed(layers, chains)
    # The personal layer counts its chains over all devices (decisions at its 10th, 20th, ...
    # chain): the 4 of "home" come after the 40th, so they wait for decide().
    assert {o.key for o in outs} == {f"global:{WILK}"}
    with pytest.raises(RuntimeError):
        layers.to_dict()
    outs += layers.decide()
    assert f"personal:home:{WILK}" in {o.key for o in outs}
    for device in ("home", "g0", None):  # the same rewrites (records: later ts)
        assert layers.lookup(WILK, device)["rewrite"] == plain.lookup(WILK, device)["rewrite"]
    assert layers.personal._dirty == {} and layers.decide() == []
    restored = RewriteLayers.from_dict(json.loads(json.dumps(layers.to_dict())))
    assert restored.to_dict() == layers.to_dict()


def test_engine_decide_every_on_the_sample() -> None:
    lines = (Path(__file__).resolve().parent.parent / "data" / "sample.jsonl").read_bytes()
    runs = {}
    for n in ("1", "1000"):
        eng = FeedbackEngine(Settings.from_env({"FEEDBACK_STREAM_REWRITE_DECIDE_EVERY": n}))
        outs = [o for line in lines.splitlines() for o in eng.process(line)] + eng.flush()
        eng.rewrites.to_dict()  # flush() left nothing pending
        triggers = [(o.key, o.record["rewrite"]) for o in outs if o.stream == REWRITE_TRIGGERS]
        runs[n] = (decisions(eng.rewrites.global_), sorted(triggers))
    assert eng.rewrites.global_.config.decide_every == 1000
    # The same 7 global rewrites with the same numbers and the same triggers, published later
    # (the sample has ~3,900 chains: decisions at 1,000, 2,000, 3,000 and at the flush).
    assert runs["1000"] == runs["1"] and len(runs["1"][0]) == 7


def test_topology_decides_at_the_end_of_each_batch() -> None:
    chains, _ = population(7, 2000)
    settings = KafkaSettings(rewrite_decide_every=1000)
    proc, table = GlobalRewriteProcessor(settings, {}), {}
    ref = RewriteMiner(RewriteConfig(min_support=5, decide_every=1000))
    for start in range(0, len(chains), 300):
        batch = [{**c, "src": [0, start + i]} for i, c in enumerate(chains[start:start + 300])]
        msg = Message(None, orjson.dumps({"chains": batch}), 0, start)
        assert proc.process([msg]) == feed(ref, batch) + ref.decide()
        proc.commit()  # nothing pending: the snapshot works
    assert proc.lookup(BAD[0]) == ref.get(BAD[0]) and proc.miner._since == 0
    personal = PersonalRewrites(settings, table)
    outputs = [Output(CHAINS, c["device_id"], c) for c in chains[:500]]
    personal.learn(outputs)
    personal.commit()
    assert table and all(m._since == 0 for m in personal.layer.miners.values())
