"""The absorbing Markov chain under ``stream.rewrites``: per-utterance state and the solver.

A ``State`` holds one transient state's counts and the reverse links the miner needs to
re-decide and evict. Most utterances are seen once, as a one-turn chain: they only ever get an
absorption count. So the four containers start as shared, read-only empty sentinels and become
real ``dict`` / ``set`` objects on their first entry (and return to the sentinels when eviction
empties them): an empty ``set`` costs 216 bytes and an empty ``dict`` 64, which made them most
of an utterance's memory (two states per utterance, one per layer). Readers need no special
case: the sentinels support every read (``get``, ``items``, ``in``, ``&``, ``|``, iteration),
and a write to one by mistake raises instead of corrupting the state every other one shares.

>>> a, b = State(), State()
>>> a.out is NO_COUNTS and b.preds is NO_NAMES
True
>>> link(a, "a", b, "b"); add_support(a, "a", b, "b", pool_min=1)
>>> dict(a.out), set(b.preds), dict(a.support), set(b.supporters), a.strong
({'b': 1}, {'a'}, {'b': 1}, {'a'}, 1)
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import NoReturn, cast

import numpy as np


class _NoCounts(dict[str, int]):
    """The shared empty ``dict`` sentinel: read-only, and the same object after pickling or
    ``copy.deepcopy`` (pickled by name), so ``is NO_COUNTS`` checks survive a copy."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("shared empty sentinel: replace it with a dict before writing")

    __setitem__ = __delitem__ = __ior__ = setdefault = update = pop = popitem = clear = _read_only

    def __reduce__(self) -> str:
        return "NO_COUNTS"


class _NoNames(frozenset[str]):
    """The shared empty ``set`` sentinel (a ``frozenset``: it has no ``add``), pickled by name."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "NO_NAMES"


# Typed as the mutable types the fields hold once filled: every write goes through the
# helpers below, which replace a sentinel first.
NO_COUNTS: dict[str, int] = _NoCounts()
NO_NAMES = cast(set[str], _NoNames())


class State:
    __slots__ = ("out", "succ", "fail", "support", "preds", "supporters", "strong")

    def __init__(self) -> None:
        self.out: dict[str, int] = NO_COUNTS  # next utterance in a chain -> count
        self.succ = self.fail = 0  # absorption counts (this utterance was the chain's tip)
        self.support: dict[str, int] = NO_COUNTS  # later utterance -> chains with both, in order
        self.preds: set[str] = NO_NAMES  # reverse of ``out``
        self.supporters: set[str] = NO_NAMES  # reverse of ``support``
        # Pooled support: the sum of the ``support`` counts at or above the miner's pool
        # threshold (``RewriteMiner.pool_min``). The utterance is a rewrite candidate once it
        # reaches ``min_support``: O(1) for every state the incremental search visits. With
        # the threshold at ``min_support`` that is "one rewrite has ``min_support`` chains".
        self.strong = 0

    def observed(self) -> int:
        return self.succ + self.fail + sum(self.out.values())

    def turn_success(self) -> float | None:
        """Share of the utterance's uses that ended their chain in a success right there
        (its turn-level success, ``p_success_original``); None before any use is counted."""
        observed = self.observed()
        return self.succ / observed if observed else None


def link(a: State, a_name: str, b: State, b_name: str) -> None:
    """Count one transition ``a -> b``."""
    out = a.out
    if out is NO_COUNTS:
        out = a.out = {}
    out[b_name] = out.get(b_name, 0) + 1
    if b.preds is NO_NAMES:
        b.preds = set()
    b.preds.add(a_name)


def add_support(a: State, a_name: str, b: State, b_name: str, pool_min: int) -> None:
    """Count one chain in which ``b`` followed ``a`` (``pool_min``: see ``State.strong``)."""
    support = a.support
    if support is NO_COUNTS:
        support = a.support = {}
    c = support[b_name] = support.get(b_name, 0) + 1
    if c == pool_min:  # the entry joins the pooled support with all its chains
        a.strong += c
    elif c > pool_min:
        a.strong += 1
    if b.supporters is NO_NAMES:
        b.supporters = set()
    b.supporters.add(a_name)


def unlink_evicted(states: Mapping[str, State], x: str, st: State, pool_min: int) -> list[str]:
    """Remove every reference to the evicted state ``x`` (already out of ``states``) from the
    states left; returns the utterances that lost ``x`` as a supported rewrite, sorted."""
    for v in st.out.keys() & states.keys():
        other = states[v]
        other.preds.discard(x)  # a real set: it holds x
        if not other.preds:
            other.preds = NO_NAMES
    for p in st.preds & states.keys():
        other = states[p]
        del other.out[x]
        if not other.out:
            other.out = NO_COUNTS
    for r in st.support.keys() & states.keys():
        other = states[r]
        other.supporters.discard(x)
        if not other.supporters:
            other.supporters = NO_NAMES
    lost = sorted(st.supporters & states.keys())
    for q in lost:
        other = states[q]
        c = other.support.pop(x)
        if c >= pool_min:
            other.strong -= c
        if not other.support:
            other.support = NO_COUNTS
    return lost


def load(states: dict[str, State], rows: Iterable[list], pool_min: int) -> None:
    """Fill ``states`` from ``to_dict`` rows ``[u, out, succ, fail, support]``, in order."""
    for u, out, succ, fail, support in rows:
        st = states[u] = State()
        st.succ, st.fail = succ, fail
        if out:
            st.out = dict(out)
        if support:
            st.support = dict(support)
            st.strong = sum(c for c in st.support.values() if c >= pool_min)
    for u, st in states.items():
        for v in st.out:
            other = states[v]
            if other.preds is NO_NAMES:
                other.preds = set()
            other.preds.add(u)
        for r in st.support:
            other = states[r]
            if other.supporters is NO_NAMES:
                other.supporters = set()
            other.supporters.add(u)


class Memo:
    """Orderings the searches below derive from the counts, kept while the counts do not
    change: during one ``RewriteMiner.decide()`` (pure re-decisions, no counting), popular
    states are visited by hundreds of searches and neighbourhoods, and sorting their
    thousands of predecessors or pushing all their successors each time was most of the
    miner's cost late in a long run (it grows with the states' degrees). Drop it as soon as
    a count changes."""

    __slots__ = ("preds", "succs")

    def __init__(self) -> None:
        self.preds: dict[str, list[str]] = {}
        """state -> its predecessors, most traversed edge into it first (ties by name)"""
        self.succs: dict[str, tuple[int, list[tuple[int, str]]]] = {}
        """state -> (observations, its successors as (-count, name) in ascending order)"""


def _ordered_preds(states: Mapping[str, State], v: str, memo: Memo | None) -> Iterable[str]:
    preds = states[v].preds
    if len(preds) < 2:
        return preds
    ordered = None if memo is None else memo.preds.get(v)
    if ordered is None:
        ordered = sorted(preds, key=lambda p: (-states[p].out[v], p))
        if memo is not None:
            memo.preds[v] = ordered
    return ordered


def affected(states: Mapping[str, State], published: Mapping[str, object], seeds: list[str],
             limit: int, visit_cap: int, min_support: int,
             memo: Memo | None = None) -> list[str]:
    """Up to ``limit`` rewrite candidates (pooled support ``State.strong`` of ``min_support``,
    or a published rewrite)
    among the seeds and the states that can reach them (at most ``visit_cap`` visited),
    nearest and most traversed first. The search stops once ``limit`` candidates are found:
    later ones would come after them in this order anyway (the hot path for popular
    utterances with many predecessors)."""
    seen = dict.fromkeys(seeds)
    # the candidate test inlined here and below: this loop is the miner's hottest
    found = [u for u in seen if states[u].strong >= min_support or u in published]
    frontier = list(seen)
    while frontier and len(seen) < visit_cap and len(found) < limit:
        nxt: list[str] = []
        for v in frontier:
            room = visit_cap - len(seen)
            if room <= 0:  # the visit cap is reached: nothing more is visited
                break
            # The first ``room`` unseen predecessors in the memo's order: the ones a sort of
            # the unseen ones alone would give (the order is by count, then name).
            for p in _ordered_preds(states, v, memo):
                if p in seen:
                    continue
                if not room:
                    break
                room -= 1
                seen[p] = None
                nxt.append(p)
                if states[p].strong >= min_support or p in published:
                    found.append(p)
                    if len(found) == limit:  # what follows would be cut off anyway
                        return found
        frontier = nxt
    return found[:limit]


def _ordered_succs(states: Mapping[str, State], s: str,
                   memo: Memo | None) -> tuple[int, list[tuple[int, str]]]:
    entry = None if memo is None else memo.succs.get(s)
    if entry is None:
        st = states[s]
        out = st.out
        entry = (st.succ + st.fail + sum(out.values()), sorted((-c, v) for v, c in out.items()))
        if memo is not None:
            memo.succs[s] = entry
    return entry


# Below this a path probability times a transition probability can lose precision (subnormal
# floats), so two counts could give the same product: the successors are then ranked by the
# products themselves (see ``neighbourhood``).
_TINY = 1e-280


def neighbourhood(states: Mapping[str, State], sources: Iterable[str], cap: int,
                  memo: Memo | None = None) -> list[str]:
    """Up to ``cap`` states reachable from ``sources``, most probable path first.

    Best-first over (-path probability, name). Each kept state's successors enter the heap
    one at a time, most probable first (``(-count, name)`` order is the order of
    ``(-p * count / total, name)`` for normal floats), each when the one before it comes out:
    the heap pops exactly what pushing all of them at once would pop, without pushing
    hundreds of successors of a popular state that are never reached.
    """
    heap: list[tuple[float, str, int]] = [(-1.0, s, -1) for s in sorted(set(sources))
                                          if s in states]
    heapq.heapify(heap)
    push, pop = heapq.heappush, heapq.heappop
    kept: dict[str, None] = {}
    # per kept state with successors: [its -path probability, total, successors, next index]
    expansions: list[list] = []

    def advance(k: int) -> None:
        exp = expansions[k]
        neg_p, total, succs, i = exp
        while i < len(succs):
            neg_c, v = succs[i]
            i += 1
            if v not in kept:
                push(heap, (neg_p * -neg_c / total, v, k))
                break
        exp[3] = i

    while heap and len(kept) < cap:
        neg_p, s, k = pop(heap)
        if k >= 0:
            advance(k)  # its next successor takes its place in the heap
        if s in kept:
            continue
        kept[s] = None
        if states[s].out:
            total, succs = _ordered_succs(states, s, memo)
            if -neg_p / total < _TINY:
                # ranked by the products as computed (ties in them by name), not by counts
                ranked = sorted(((neg_p * -neg_c / total, v), neg_c) for neg_c, v in succs)
                succs = [(neg_c, v) for (_, v), neg_c in ranked]
            expansions.append([neg_p, total, succs, 0])
            advance(len(expansions) - 1)
    return list(kept)


def solve(states: Mapping[str, State], names: list[str], prior: float,
          discount: float) -> dict[str, float]:
    """P(success | start at s) for the states of ``names`` (a neighbourhood) that reach an
    observed absorption inside it; the others carry no information here, and leaving them out
    makes ``I - Q`` invertible. Empty if LAPACK still finds it singular.

    The arithmetic (order of operations included) is the one the published values were first
    computed with: a faster rewrite must not move a probability across a rounding boundary.
    """
    n = len(names)
    index = {s: i for i, s in enumerate(names)}
    sts = [states[s] for s in names]
    rows: list[int] = []
    cols: list[int] = []
    counts: list[int] = []
    for i, st in enumerate(sts):
        out = st.out
        # Only the successors inside, found from the smaller side (a popular state has
        # hundreds). Their order does not matter: no (row, column) pair repeats, and the
        # row totals add integers, exact in float64 in any order.
        for v in (out.keys() & index.keys() if len(out) > n else [v for v in out if v in index]):
            rows.append(i)
            cols.append(index[v])
            counts.append(out[v])
    informed = [bool(st.succ or st.fail) for st in sts]
    if not all(informed):
        # Backwards from the observed absorptions over the edges inside (a popular state's
        # own predecessors are thousands: not those).
        into: list[list[int]] = [[] for _ in range(n)]
        for i, j in zip(rows, cols, strict=True):
            into[j].append(i)
        stack = [j for j in range(n) if informed[j]]
        while stack:
            for i in into[stack.pop()]:
                if not informed[i]:
                    informed[i] = True
                    stack.append(i)
        if not all(informed):
            # The uninformed states go, with every edge from or to them.
            new = [-1] * n
            names = [s for s, keep in zip(names, informed, strict=True) if keep]
            sts = [st for st, keep in zip(sts, informed, strict=True) if keep]
            for k, i in enumerate(i for i in range(n) if informed[i]):
                new[i] = k
            kept = [e for e, (i, j) in enumerate(zip(rows, cols, strict=True))
                    if informed[i] and informed[j]]
            rows = [new[rows[e]] for e in kept]
            cols = [new[cols[e]] for e in kept]
            counts = [counts[e] for e in kept]
            n = len(names)
    # The arithmetic in numpy, element by element the same IEEE operations in the same order
    # as the per-row Python loop it replaces (counts are exact in float64):
    # total = succ + fail + prior + kept counts; Q = discount * c / total; R = (succ + prior/2)
    # / total.
    succ = np.array([st.succ for st in sts], dtype=float)
    fail = np.array([st.fail for st in sts], dtype=float)
    row = np.array(rows, dtype=np.intp)
    total = (succ + fail + prior) + np.bincount(row, np.array(counts, dtype=float), n)
    a = np.eye(n)
    a[row, cols] -= discount * np.array(counts, dtype=float) / total[row]  # I - Q
    r = (succ + prior / 2) / total
    try:
        b = np.linalg.solve(a, r)
    except np.linalg.LinAlgError:  # not expected (see above); the caller keeps its decisions
        return {}
    # Rounded so that decisions do not depend on the last bits of the LAPACK build.
    return {s: round(x, 9) for s, x in zip(names, b.tolist(), strict=True)}
