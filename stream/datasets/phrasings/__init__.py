"""A population built from real crowd-sourced phrasings (CLINC150, CC BY 3.0: see
``ATTRIBUTION.md`` beside this file): goals are intents, each asked in several real phrasings
with different success probabilities, rephrased until success or abandonment.

``generate`` yields (JSONL line, truth) pairs like ``stream.datasets.synth.generate``; truth
adds the goal, whether the turn really failed and its ``failure_point``. ``Population`` also
exposes the goals and the devices' personal fixes, for scoring rewrites. The engine never
reads any of it.

>>> pairs = list(generate(300, 20, seed=1))
>>> len(pairs) >= 300, "watermark" in pairs[-1][1]
(True, True)
>>> sorted({t["behaviour"] for _, t in pairs if "behaviour" in t})[:3]
['false_wake', 'out_of_scope', 'related']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson

from stream.datasets.jsonl import write_pairs
from stream.datasets.phrasings.population import SPLITS, Goal, Phrasing, build_goals, split_of
from stream.datasets.phrasings.sim import BASE_TS, Population, Probs

__all__ = ["BASE_TS", "SPLITS", "Goal", "Phrasing", "Population", "Probs", "build_goals",
           "split_of", "generate", "expected_rewrites", "write"]


def generate(n_events: int, n_devices: int, seed: int = 0, split: str = "all",
             final_watermark: bool = True, population: Population | None = None,
             ) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(line, truth) pairs: at least ``n_events`` events (whole sessions), then one watermark
    10 minutes after the last event."""
    pop = population or Population(n_devices, seed, split)
    last = BASE_TS
    for ts, line, truth in pop.events(n_events):
        last = ts
        yield line, truth
    if final_watermark:
        wm = last + 600_000
        yield orjson.dumps({"type": "watermark", "ts": wm}), {"watermark": wm}


def expected_rewrites(pop: Population) -> dict[str, Any]:
    """What a rewrite miner should find: every phrasing's true success probability (by its
    normalised text; a misheard phrasing's text never succeeds) and the personal fixes
    ``(device, habit) -> own phrasing``."""
    from stream.text import normalize

    success: dict[str, tuple[str, float]] = {}
    for goal in pop.goals:
        for ph in goal.phrasings:
            success[normalize(ph.text)] = (goal.name, ph.p_success)
            success.setdefault(normalize(ph.misheard), (goal.name, 0.0))
    personal = {(d.id, normalize(u.text)): normalize(fix.text)
                for d in pop.devices for u, fix in d.personal.values()}
    best = {g.name: normalize(g.best.text) for g in pop.goals}
    return {"success": success, "personal": personal, "best": best}


def write(path_events: str, path_truth: str | None, **kw: Any) -> dict[str, int]:
    """Write the stream (``"-"``: stdout) and its truth as JSONL; return counts."""
    counts: Counter[str] = Counter()

    def observe(truth: dict[str, Any] | None) -> None:
        assert truth is not None  # this generator writes no malformed lines
        counts["events"] += 1
        if "behaviour" in truth:
            counts[f"behaviour.{truth['behaviour']}"] += 1
            counts["defective"] += truth["defective"]
            counts["failed"] += truth["failed"]
            counts["rephrases"] += truth["rephrase_of"] is not None
            if truth["failure_point"]:
                counts[f"failure_point.{truth['failure_point']}"] += 1

    write_pairs(generate(**kw), path_events, path_truth, observe)
    return dict(sorted(counts.items()))
