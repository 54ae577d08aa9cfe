"""The rewrite miner's searches (``stream.markov``): the lazy best-first neighbourhood and the
memoised orderings give exactly what the plain searches give, and a solve is skipped only when
none of its sources could change."""

from __future__ import annotations

import heapq
import random

import numpy as np
import pytest

from stream import markov
from stream.markov import State
from stream.rewrite_config import RewriteConfig
from stream.rewrites import RewriteMiner
from tests.rewrite_chains import feed, population


def reference_neighbourhood(states: dict[str, State], sources: list[str], cap: int) -> list[str]:
    """Best-first with every successor pushed at once (the search as first written)."""
    heap = [(-1.0, s) for s in sorted(set(sources)) if s in states]
    heapq.heapify(heap)
    kept: dict[str, None] = {}
    while heap and len(kept) < cap:
        neg_p, s = heapq.heappop(heap)
        if s in kept:
            continue
        kept[s] = None
        st = states[s]
        total = st.succ + st.fail + sum(st.out.values())
        for v, c in st.out.items():
            if v not in kept:
                heapq.heappush(heap, (neg_p * c / total, v))
    return list(kept)


def random_graph(rng: random.Random, n: int, degree: int) -> dict[str, State]:
    names = [f"u{i:03d}" for i in range(n)]
    states = {u: State() for u in names}
    for u in names:
        st = states[u]
        st.succ, st.fail = rng.choice((0, 0, 1, 3)), rng.choice((0, 1, 2))
        for v in rng.sample(names, rng.randint(0, degree)):
            if v != u:
                for _ in range(rng.choice((1, 1, 2, 5))):  # ties in counts are common
                    markov.link(st, u, states[v], v)
    return states


def reference_solve(states: dict[str, State], names: list[str]) -> dict[str, float]:
    """The absorption probabilities by the definition: the states that reach an observed
    absorption inside ``names`` (fixed point over the predecessor sets), a dense ``I - Q``."""
    inside, informed = set(names), {s for s in names if states[s].succ or states[s].fail}
    grew = True
    while grew:
        more = {p for s in informed for p in states[s].preds if p in inside} - informed
        informed |= more
        grew = bool(more)
    names = [s for s in names if s in informed]
    n = len(names)
    a, r = np.eye(n), np.zeros(n)
    for i, s in enumerate(names):
        st = states[s]
        kept = {v: c for v, c in st.out.items() if v in informed}
        total = float(st.succ + st.fail + sum(kept.values()))
        for v, c in kept.items():
            a[i, names.index(v)] -= c / total
        r[i] = st.succ / total
    return {s: round(x, 9) for s, x in zip(names, np.linalg.solve(a, r).tolist(), strict=True)}


@pytest.mark.parametrize("seed", range(20))
def test_solve_equals_the_definition(seed: int) -> None:
    rng = random.Random(seed)
    states = random_graph(rng, 60, 6)
    for _ in range(10):
        names = markov.neighbourhood(states, rng.sample(list(states), 2), rng.choice((5, 20, 60)))
        assert markov.solve(states, names, 0.0, 1.0) == reference_solve(states, names)


@pytest.mark.parametrize("seed", range(30))
def test_neighbourhood_and_affected_equal_the_plain_searches(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice((20, 80, 200))
    states = random_graph(rng, n, min(n, rng.choice((3, 10, 40))))
    memo = markov.Memo()
    names = list(states)
    published = dict.fromkeys(rng.sample(names, 5))
    for u in names[:40]:
        states[u].strong = rng.choice((0, 0, 0, 2, 5))  # candidates from 3 (pooled support)
    for _ in range(10):
        sources = rng.sample(names, rng.randint(1, 4))
        cap = rng.choice((2, 5, 16, 64, 500))
        ref = reference_neighbourhood(states, sources, cap)
        assert markov.neighbourhood(states, sources, cap) == ref
        assert markov.neighbourhood(states, sources, cap, memo) == ref  # memo reused
        plain = markov.affected(states, published, sources, 4, 30, 3)
        assert markov.affected(states, published, sources, 4, 30, 3, memo) == plain
    assert memo.preds and memo.succs


def test_neighbourhood_ranks_by_the_products_when_they_get_tiny() -> None:
    # A path whose probability ends near the bottom of the float range (subnormal): there
    # the successors are ranked by the products as computed, as the plain search does.
    names = [f"x{i:02d}" for i in range(40)]
    states = {u: State() for u in [*names, "s", "a", "b", "c"]}
    for u, v in zip(names, [*names[1:], "s"], strict=True):
        markov.link(states[u], u, states[v], v)
        states[u].fail = 10 ** 8  # each step ~1e-8: 1e-320 at "s"
    for v, c in (("a", 3), ("b", 2), ("c", 3)):
        for _ in range(c):
            markov.link(states["s"], "s", states[v], v)
    ref = reference_neighbourhood(states, ["x00"], 100)
    assert markov.neighbourhood(states, ["x00"], 100) == ref == [*names, "s", "a", "c", "b"]


@pytest.mark.parametrize("seed", (1, 2))
def test_skipped_solves_could_change_nothing(seed: int) -> None:
    chains, _ = population(seed, 1500)
    m = RewriteMiner(RewriteConfig(min_support=3))
    feed(m, chains)
    skippable = [u for u in m.states if m._cannot_change(u)]
    assert skippable  # good utterances with support: the case the skip is for
    for u in skippable:
        before, out = dict(m.published), []
        m._decide(u, m.solve([u]), 0, out)
        assert out == [] and m.published == before
