"""Batched rewrite decisions (decide_every > 1): equal to a full re-decision, snapshots, eviction,
layers, the engine and the topology."""

from __future__ import annotations

import dataclasses
import json
import random
from functools import cache
from pathlib import Path

import orjson
import pytest

from stream import markov
from stream.engine import FeedbackEngine
from stream.records import CHAINS, REWRITE_TRIGGERS, Output
from stream.rewrite_config import RewriteConfig
from stream.rewrite_layers import RewriteLayers
from stream.rewrites import RewriteMiner
from stream.settings import Settings
from tests.rewrite_chains import (
    BAD,
    CFG3,
    PERSONAL3,
    WILK,
    chain,
    check_bookkeeping,
    feed,
    population,
    wilkerson_chains,
)
from topologies.processors import GlobalRewriteProcessor, Message, PersonalRewrites
from topologies.settings import KafkaSettings


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

    def counted(self: RewriteMiner, sources: list[str],
                memo: markov.Memo | None = None) -> dict[str, float]:
        calls[0] += 1
        return solve(self, sources, memo)

    monkeypatch.setattr(RewriteMiner, "solve", counted)
    return calls


def check_published(m: RewriteMiner) -> None:
    """Published rewrites only between tracked utterances, with the support they need (alone,
    or pooled with other rewrites of the utterance)."""
    for u, rec in m.published.items():
        assert u in m.states and rec["rewrite"] in m.states
        assert m.states[u].support[rec["rewrite"]] >= m.pool_min
        assert m.states[u].strong >= m.config.min_support


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


# Exact when a decision depends on the counts only: no hysteresis (it makes a decision depend on
# what was published before, i.e. on when decisions happened) and neighbourhoods and
# affected-utterance searches that cover the whole graph (no cut depending on which sources
# share a solve).
EXACT = RewriteConfig(hysteresis=0.0, max_neighbourhood=256)


@cache
def full_redecision(seed: int) -> tuple[list[dict], dict[str, str], int, dict[str, tuple]]:
    """The population of ``seed``, its best rewrites, and a per-chain miner over it whose every
    utterance was re-decided at the end: its solves and decisions. The same for every
    ``decide_every`` (only read): computed once per run."""
    chains, best = population(seed)
    with pytest.MonkeyPatch.context() as patch:
        solves = count_solves(patch)
        ref = RewriteMiner(EXACT)
        feed(ref, chains)
        per_chain_solves = solves[0]
    redecide_all(ref)
    return chains, best, per_chain_solves, decisions(ref)


@pytest.mark.parametrize("n", [7, 100, 1000, 5000])
def test_batched_decisions_equal_a_full_redecision(n: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # With ``EXACT``, every utterance a batch's chains can affect is re-decided after it, and
    # nothing else can have changed: the same records as the full re-decision.
    solves = count_solves(monkeypatch)
    for seed in (1, 2, 3):
        chains, best, per_chain_solves, want = full_redecision(seed)
        m = RewriteMiner(dataclasses.replace(EXACT, decide_every=n))
        solves[0] = 0
        outs = feed(m, chains)
        assert (len(outs) > 0) == (n < len(chains))  # every n chains on its own
        outs += m.decide()
        assert m._pending == {} and m._since == 0
        assert solves[0] < per_chain_solves / (3 if n >= 100 else 1.1), (solves, per_chain_solves)
        assert decisions(m) == want and set(BAD) <= set(m.published)
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
