"""rewrite: time to (re)solve the absorbing chain of one utterance, and a full refresh.

1. ``RewriteMiner.solve([u])`` on graphs whose neighbourhood of ``u`` has 5, 20 and 64 states,
   sparse (two successors per state) and dense (every state leads to every other). Baseline:
   ``numpy.linalg.solve`` of a system of the same size alone, so the ratio is the cost of
   building the neighbourhood and the matrices in Python around LAPACK.
2. Full refresh: a miner with 100,000 states built from generated chains (counts aggregated
   here and loaded with ``RewriteMiner.from_dict``, the persistence format), then one
   ``solve`` per utterance. A random sample of 2,000 is timed first; when it predicts under
   two minutes for all states, all are solved and measured, else the sample is extrapolated
   (the result says which).
   Also timed: ``learn_one`` of one more chain (the incremental path a stream pays per chain).
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import Options, Progress, Row, log

SIZES = (5, 20, 64)


def _miner(states: list[list[Any]], config: Any = None) -> Any:
    from stream.rewrite_config import RewriteConfig
    from stream.rewrites import RewriteMiner

    config = config or RewriteConfig(min_support=3)  # as measured before the defaults met
    return RewriteMiner.from_dict({"layer": "global", "device_id": None, "states": states,
                                   "published": {}, "evictions": 0,
                                   "config": dataclasses.asdict(config)})


def graph(k: int, dense: bool) -> tuple[Any, str]:
    """A miner whose state 0 reaches exactly ``k`` states; (miner, source utterance)."""
    names = [f"play the song number {j} please" for j in range(k)]
    states = []
    for j, u in enumerate(names):
        if dense:
            out = {names[m]: 1 + (j * m) % 3 for m in range(k) if m != j}
        else:
            out = {names[m]: c for m, c in ((j + 1, 3), (j + 2, 1)) if m < k}
        states.append([u, out, 1 + j % 3, 2, {}])
    return _miner(states), names[0]


def per_call(fn: Callable[[], Any], budget_s: float) -> float:
    """Median seconds per call over 5 rounds that together take about ``budget_s``."""
    fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < budget_s / 10 or n < 3:
        fn()
        n += 1
    reps = max(3, int(n * 2))
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        rounds.append((time.perf_counter() - t0) / reps)
    return statistics.median(rounds)


def _system(k: int, density: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """I - Q and r of an absorbing chain with k transient states (rows of Q sum to < 1)."""
    q = rng.random((k, k)) * (rng.random((k, k)) < density)
    np.fill_diagonal(q, 0.0)
    q *= 0.6 / np.maximum(q.sum(axis=1, keepdims=True), 1e-9)
    return np.eye(k) - q, rng.random(k) * 0.4


def solve_sizes(budget_s: float) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for dense in (False, True):
        for k in SIZES:
            miner, source = graph(k, dense)
            solved = miner.solve([source])
            a, r = _system(k, 1.0 if dense else 2.0 / k, rng)
            t_solve = per_call(lambda m=miner, s=source: m.solve([s]), budget_s)
            t_hood = per_call(lambda m=miner, s=source: m.neighbourhood([s]), budget_s)
            t_lapack = per_call(lambda a=a, r=r: np.linalg.solve(a, r), budget_s)
            out.append({"graph": "dense" if dense else "sparse", "k": k,
                        "states_solved": len(solved), "solve_us": 1e6 * t_solve,
                        "neighbourhood_us": 1e6 * t_hood, "lapack_us": 1e6 * t_lapack,
                        "ratio": t_solve / t_lapack})
    return out


def chain_corpus(n_states: int, seed: int) -> tuple[list[list[Any]], list[list[str]]]:
    """States (``from_dict`` rows) aggregated from generated chains, and spare chains.

    Every utterance starts one chain; 30% of chains rephrase once or more, mostly to a
    nearby utterance (same request family), sometimes anywhere; popular utterances (Zipf)
    start extra chains. The tip's success probability is a property of the utterance.
    """
    rng = random.Random(seed)
    names = [f"play the song number {j} please" for j in range(n_states)]
    p_ok = [rng.random() for _ in range(n_states)]
    out: dict[int, dict[int, int]] = defaultdict(dict)
    succ, fail = [0] * n_states, [0] * n_states
    support: dict[int, dict[int, int]] = defaultdict(dict)
    weights = [1.0 / (j + 1) for j in range(n_states)]
    roots = list(range(n_states)) + rng.choices(range(n_states), weights, k=2 * n_states)
    spare: list[list[str]] = []
    for i, root in enumerate(roots):
        chain = [root]
        while len(chain) < 5 and rng.random() < 0.3:
            step = rng.randint(1, 30) if rng.random() < 0.9 else rng.randrange(n_states)
            chain.append((chain[-1] + step) % n_states)
        if i % 100 == 0:
            spare.append([names[j] for j in chain])
            continue
        for a, b in zip(chain, chain[1:], strict=False):
            out[a][b] = out[a].get(b, 0) + 1
        if rng.random() < p_ok[chain[-1]]:
            succ[chain[-1]] += 1
        else:
            fail[chain[-1]] += 1
        for a, b in {(a, b) for x, a in enumerate(chain) for b in chain[x + 1:] if a != b}:
            support[a][b] = support[a].get(b, 0) + 1
    states = [[names[j], {names[v]: c for v, c in out[j].items()}, succ[j], fail[j],
               {names[v]: c for v, c in support[j].items()}] for j in range(n_states)]
    return states, spare


def _solve_all(miner: Any, todo: list[str], label: str, progress: bool,
               ) -> tuple[float, list[int]]:
    bar = Progress(label, len(todo), progress, unit="solves")
    sizes: list[int] = []
    w0 = time.perf_counter()
    for i, u in enumerate(todo):
        sizes.append(len(miner.solve([u])))
        if i & 255 == 0:
            bar.update(i)
    elapsed = time.perf_counter() - w0
    bar.update(len(todo))
    bar.close()
    return elapsed, sizes


def refresh(n_states: int, sample: int, full_budget_s: float, seed: int,
            progress: bool) -> dict[str, Any]:
    """Solve a sample; if all states are estimated to take at most ``full_budget_s``, solve
    them all and report that measurement instead of the extrapolation."""
    from stream.rewrite_config import RewriteConfig

    t0 = time.perf_counter()
    states, spare = chain_corpus(n_states, seed)
    miner = _miner(states, RewriteConfig(max_states=max(200_000, 2 * n_states)))
    build_s = time.perf_counter() - t0
    names = [row[0] for row in states]
    del states
    todo = random.Random(seed).sample(names, min(sample, len(names)))
    solve_s, sizes = _solve_all(miner, todo, "rewrite refresh (sample)", progress)
    sample_ms = 1e3 * solve_s / len(todo)
    full = solve_s / len(todo) * n_states <= full_budget_s
    if full:
        todo = names
        solve_s, sizes = _solve_all(miner, todo, "rewrite refresh (all)", progress)
    # Baseline: LAPACK alone on systems of the same sizes, built beforehand.
    rng = np.random.default_rng(seed)
    systems = [_system(k, 0.1, rng) for k in sizes if k > 0]
    w0 = time.perf_counter()
    for a, r in systems:
        np.linalg.solve(a, r)
    lapack_s = time.perf_counter() - w0
    w0 = time.perf_counter()
    for chain in spare[:2_000]:
        miner.learn_one({"device_id": "bench", "utterances": chain, "outcome": "success",
                         "ts": 1})
    learn_s = time.perf_counter() - w0
    per_solve = solve_s / len(todo)
    return {"states": n_states, "build_s": build_s, "solved": len(todo), "measured_all": full,
            "sample_ms_per_solve": sample_ms,
            "solve_s": solve_s, "ms_per_solve": 1e3 * per_solve,
            "refresh_s": per_solve * n_states, "lapack_s": lapack_s,
            "ratio": solve_s / max(lapack_s, 1e-9),
            "mean_states_per_solve": statistics.fmean(sizes),
            "max_states_per_solve": max(sizes), "sizes": miner.state_sizes(),
            "learn_one_ms": 1e3 * learn_s / max(1, min(2_000, len(spare)))}


def run(opts: Options) -> tuple[dict[str, Any], dict[str, Any], list[Row]]:
    n_states = opts.pick(100_000, 10_000)
    sample = opts.pick(2_000, 500)
    budget = opts.pick(0.5, 0.05)
    params = {"sizes": list(SIZES), "refresh_states": n_states, "sample": sample}
    log("rewrite: solve time vs neighbourhood size")
    sizes = solve_sizes(budget)
    rows = [Row(f"rewrite: solve, {s['graph']} k={s['k']}", f"{s['solve_us']:,.0f} us",
                f"numpy.linalg.solve {s['lapack_us']:,.0f} us", f"{s['ratio']:.1f}x", "",
                f"{s['states_solved']} states solved; neighbourhood search "
                f"{s['neighbourhood_us']:,.0f} us") for s in sizes]
    log(f"rewrite: building a miner with {n_states:,} states")
    ref = refresh(n_states, sample, opts.pick(120.0, 0.0), seed=opts.seed,
                  progress=opts.progress)
    how = "measured" if ref["measured_all"] else "extrapolated"
    rows.append(Row(
        f"rewrite: full refresh, {n_states:,} utterances",
        f"{ref['refresh_s']:,.1f} s ({how})",
        f"LAPACK alone {ref['lapack_s'] * n_states / ref['solved']:,.1f} s",
        f"{ref['ratio']:.1f}x", "",
        f"{ref['ms_per_solve']:.3f} ms/solve over {ref['solved']:,} solves, "
        f"{ref['mean_states_per_solve']:.0f} states per solve on average; learn_one "
        f"{ref['learn_one_ms']:.2f} ms/chain"))
    return params, {"solve_sizes": sizes, "refresh": ref}, rows
