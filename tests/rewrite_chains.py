"""Chains for the rewrite-miner tests: a builder, a generated population with a known best
rewrite, the Wilkerson population (global vs personal meaning) and the miner's bookkeeping check.
Shared by tests/test_rewrites*.py."""

from __future__ import annotations

import random

from stream.markov import NO_COUNTS, NO_NAMES
from stream.rewrite_config import RewriteConfig
from stream.rewrites import RewriteMiner

WILK = "weather in wilkerson"
# Small populations: 3 supporting chains publish (the settings' default is 5).
CFG3 = RewriteConfig(min_support=3)
PERSONAL3 = RewriteConfig(min_support=3, max_states=1_000)


def chain(utts: list[str], ok: bool, ts: int = 0, device: str = "d0") -> dict:
    return {"device_id": device, "event_ids": [f"e{i}" for i in range(len(utts))],
            "utterances": utts, "outcome": "success" if ok else "failure", "ts": ts}


def feed(miner, chains: list[dict]) -> list:
    return [o for c in chains for o in miner.learn_one(c)]


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


def wilkerson_chains() -> list[dict]:
    """Most devices mean Washington by "weather in wilkerson"; device "home" means California."""
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


# -- state bookkeeping: lazily created containers, the O(1) candidate count ----------------------
def pooled_support(m: RewriteMiner, u: str) -> int:
    """Chains of the rewrites of ``u`` that recur enough to be pooled, recounted."""
    pool_min = min(m.config.pool_min_support, m.config.min_support)
    return sum(c for c in m.states[u].support.values() if c >= pool_min)


def brute_candidate(m: RewriteMiner, u: str) -> bool:
    return u in m.published or pooled_support(m, u) >= m.config.min_support


def check_bookkeeping(m: RewriteMiner) -> None:
    """The per-state pooled support equals a recount, reverse links mirror
    the forward ones, and nothing holds an empty real container (it would cost memory)."""
    preds: dict[str, set[str]] = {u: set() for u in m.states}
    supporters: dict[str, set[str]] = {u: set() for u in m.states}
    for u, st in m.states.items():
        assert st.strong == pooled_support(m, u)
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
