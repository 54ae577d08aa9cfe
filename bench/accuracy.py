"""Accuracy of every signal against generated ground truth, on two unrelated populations.

- ``phrasings-a`` / ``phrasings-b``: ``stream.datasets.phrasings`` built from real
  crowd-sourced requests (CLINC150), each from one half of every intent's requests: a method
  tuned while looking at one half is checked on the other.
- ``synth``: ``stream.datasets.synth`` with another seed and size than ``data/sample.jsonl``.

Each stream is replayed through the in-process engine (what ``feedback-stream replay`` runs;
the Kafka worker gives the same records, tests/test_kafka_pipeline.py). The engine never sees
the truth. Rewrite truth is derived from the truth chains alone, the same way for every
population: an utterance's true success is the share of its turns that were not defective;
a *broken* one (>= 10 plays, success <= 0.5) that >= 5 truth chains fixed with another
utterance should get a global rewrite with true success >= 0.8; a device whose own fix (>= 5
of its chains) differs from the population's commonest fix should get a personal rewrite.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from bench.common import Options, Progress, Row, log
from stream.engine import FeedbackEngine
from stream.failure import FAILURE_POINTS
from stream.records import BARGE_INS, DEAD_LETTER, DEFECT_RATES, DEFECTS, REPHRASES
from stream.settings import Settings

TARGETS = {"rephrase_f1": 0.95, "rephrase_precision": 0.95, "defect_f1": 0.93,
           "failure_point_accuracy": 0.85, "global_rewrites_found": 0.9,
           "personal_rewrites_found": 0.8, "rates_within_0_05": 0.9}
MIN_SUPPORT = 5
RATE_MIN_PLAYS = 50


def populations(opts: Options) -> list[tuple[str, list[bytes], list[dict[str, Any]]]]:
    from stream.datasets import phrasings, synth

    events = opts.pick(40_000, 12_000)
    out = []
    for split in ("a", "b"):
        pairs = list(phrasings.generate(events, opts.pick(1_000, 300), seed=opts.seed,
                                        split=split))
        out.append((f"phrasings-{split}", [p[0] for p in pairs], [p[1] for p in pairs]))
    # Another seed, size and behaviour mix than the committed sample (seed 7, 4,000 events,
    # 300 devices, default probabilities): more failures, follow-ups and long chains.
    probs = synth.Probs(defect=0.18, followup=0.5, long_chain=0.25, interrupt=0.5)
    pairs = list(synth.generate(events // 2, opts.pick(600, 200), seed=opts.seed + 10,
                                malformed=opts.pick(60, 20), probs=probs))
    out.append(("synth", [p[0] for p in pairs], [p[1] for p in pairs]))
    return out


def replay(lines: list[bytes], label: str, progress: bool
           ) -> tuple[dict[str, list[dict[str, Any]]], FeedbackEngine]:
    # FEEDBACK_STREAM_* overrides apply (e.g. FEEDBACK_STREAM_REPHRASE_MODEL=1).
    eng = FeedbackEngine(Settings.from_env())
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    bar = Progress(f"replay {label}", len(lines), progress)
    for n, line in enumerate(lines, 1):
        for o in eng.process(line, {"line": n}):
            out[o.stream].append(o.record)
        if n & 0xFFF == 0:
            bar.update(n)
    for o in eng.flush():
        out[o.stream].append(o.record)
    bar.close()
    return out, eng


def prf(predicted: set[Any], actual: set[Any]) -> dict[str, float]:
    hit = len(predicted & actual)
    p, r = hit / max(1, len(predicted)), hit / max(1, len(actual))
    return {"precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "predicted": len(predicted), "actual": len(actual)}


def failure_points(defects: list[dict[str, Any]], truth: dict[str, dict[str, Any]]
                   ) -> dict[str, Any] | None:
    """Confusion matrix truth -> predicted over detected defects whose truth names a point."""
    pairs = [(truth[d["event_id"]]["failure_point"], d["failure_point"]) for d in defects
             if truth.get(d["event_id"], {}).get("failure_point")]
    if not pairs:
        return None
    matrix: dict[str, Counter[str]] = defaultdict(Counter)
    for actual, predicted in pairs:
        matrix[actual][predicted] += 1
    majority = max(Counter(a for a, _ in pairs).values())
    return {"accuracy": round(sum(a == p for a, p in pairs) / len(pairs), 4),
            "majority_class": round(majority / len(pairs), 4), "n": len(pairs),
            "matrix": {a: dict(sorted(c.items())) for a, c in sorted(matrix.items())}}


def truth_chains(turns: Iterable[dict[str, Any]]) -> list[tuple[str, list[str], bool]]:
    """(device, utterances in order, ended in success) of every truth chain (>= 2 turns)."""
    chains: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in turns:
        if t["chain_id"]:
            chains[t["chain_id"]].append(t)
    return [(ts[0]["device_id"], [t["utterance_norm"] for t in ts],
             ts[0]["chain_outcome"] == "success") for ts in chains.values() if len(ts) > 1]


def rewrite_truth(turns: list[dict[str, Any]]) -> dict[str, Any]:
    plays: Counter[str] = Counter()
    ok: Counter[str] = Counter()
    for t in turns:
        plays[t["utterance_norm"]] += 1
        ok[t["utterance_norm"]] += not t["defective"]
    success = {u: ok[u] / n for u, n in plays.items()}
    fixes: dict[str, Counter[str]] = defaultdict(Counter)
    own: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for device, utts, succeeded in truth_chains(turns):
        if not succeeded:
            continue
        tip = utts[-1]
        for u in set(utts[:-1]) - {tip}:
            fixes[u][tip] += 1
            own[(device, u)][tip] += 1
    broken = sorted(u for u, c in fixes.items() if plays[u] >= 10 and success[u] <= 0.5
                    and sum(c.values()) >= MIN_SUPPORT)
    commonest = {u: c.most_common(1)[0][0] for u, c in fixes.items()}
    personal = {}
    for (device, u), c in own.items():
        tip, n = c.most_common(1)[0]
        if n >= MIN_SUPPORT and tip != commonest[u]:
            personal[(device, u)] = tip
    return {"success": success, "broken": broken, "personal": personal}


def rewrites(eng: FeedbackEngine, truth: dict[str, Any]) -> dict[str, Any]:
    success = truth["success"]
    published = {u: rec["rewrite"] for u, rec in eng.rewrites.global_.published.items()}
    found = [u for u in truth["broken"] if success.get(published.get(u, ""), 0.0) >= 0.8]
    wins = sum(success.get(r, 0.0) > success.get(u, 0.0) for u, r in published.items())
    personal_found = 0
    for (device, u), fix in truth["personal"].items():
        rec = eng.rewrites.lookup(u, device)
        personal_found += rec is not None and rec["rewrite"] == fix
    return {"global_published": len(published), "global_wins": wins,
            "global_losses": len(published) - wins, "broken": len(truth["broken"]),
            "broken_fixed": len(found), "personal_expected": len(truth["personal"]),
            "personal_found": personal_found}


def rates(records: list[dict[str, Any]], turns: list[dict[str, Any]]) -> dict[str, int]:
    last = {r["key"]: r for r in records if r["key_type"] == "utterance"}
    plays: Counter[str] = Counter()
    bad: Counter[str] = Counter()
    for t in turns:
        plays[t["utterance_norm"]] += 1
        bad[t["utterance_norm"]] += t["defective"]
    keys = [u for u, n in plays.items() if n >= RATE_MIN_PLAYS]
    close = sum(u in last and abs(last[u]["rate"] - bad[u] / plays[u]) <= 0.05 for u in keys)
    return {"keys": len(keys), "within_0_05": close}


def score(out: dict[str, list[dict[str, Any]]], eng: FeedbackEngine,
          truths: list[dict[str, Any]]) -> dict[str, Any]:
    turns = [t for t in truths if "behaviour" in t]
    by_id = {t["event_id"]: t for t in turns}
    barge = ({(r["event_id"], r["source"]) for r in out[BARGE_INS]},
             {(t["event_id"], t["barge_in"]) for t in turns if t["barge_in"]})
    malformed = [i + 1 for i, t in enumerate(truths) if "malformed" in t]
    dead = sorted(d["source"]["line"] for d in out[DEAD_LETTER])
    return {
        "turns": len(turns),
        "rephrase": prf({(r["event_id"], r["rephrase_of"]) for r in out[REPHRASES]},
                        {(t["event_id"], t["rephrase_of"]) for t in turns if t["rephrase_of"]}),
        "barge_in": {**prf(*barge), "exact": barge[0] == barge[1]},
        "defect": prf({r["event_id"] for r in out[DEFECTS]},
                      {t["event_id"] for t in turns if t["defective"]}),
        "failure_point": failure_points(out[DEFECTS], by_id),
        "rewrites": rewrites(eng, rewrite_truth(turns)),
        "rates": rates(out[DEFECT_RATES], turns),
        "dead_letters": {"expected": len(malformed), "got": len(dead), "exact": dead == malformed},
    }


def rows_of(name: str, res: dict[str, Any]) -> list[Row]:
    reph, fp, rw, rt = res["rephrase"], res["failure_point"], res["rewrites"], res["rates"]
    rows = [
        # Four decimals: at three, an F1 of 0.9497 printed as 0.950 and read as the target met.
        Row(f"{name}: rephrase P / R / F1",
            f"{reph['precision']:.4f} / {reph['recall']:.4f} / {reph['f1']:.4f}",
            note=f"{reph['actual']} true rephrases"
                 + ("" if reph["f1"] >= TARGETS["rephrase_f1"]
                    and reph["precision"] >= TARGETS["rephrase_precision"]
                    else "; BELOW TARGET"),
            target="F1 >= 0.95, P >= 0.95"),
        Row(f"{name}: barge-in P / R (exact)",
            f"{res['barge_in']['precision']:.3f} / {res['barge_in']['recall']:.3f} "
            f"({'yes' if res['barge_in']['exact'] else 'NO'})", target="exact"),
        Row(f"{name}: defect label P / R / F1",
            f"{res['defect']['precision']:.3f} / {res['defect']['recall']:.3f} / "
            f"{res['defect']['f1']:.3f}", target="F1 >= 0.93"),
        Row(f"{name}: failure-point accuracy",
            "n/a (no truth)" if fp is None else f"{fp['accuracy']:.3f}",
            baseline="" if fp is None else f"majority {fp['majority_class']:.3f}",
            target=">= 0.85", note="" if fp is None else f"{fp['n']} defects"),
        Row(f"{name}: broken utterances given a good global rewrite",
            f"{rw['broken_fixed']} of {rw['broken']}", target=">= 90%",
            note=f"published {rw['global_published']}, win:loss "
                 f"{rw['global_wins']}:{rw['global_losses']}"),
        Row(f"{name}: personal rewrites found",
            f"{rw['personal_found']} of {rw['personal_expected']}", target=">= 80%"),
        Row(f"{name}: utterance defect rate within 0.05 (>= {RATE_MIN_PLAYS} plays)",
            f"{rt['within_0_05']} of {rt['keys']}", target=">= 90%"),
        Row(f"{name}: dead letters (exact)",
            f"{res['dead_letters']['got']} of {res['dead_letters']['expected']} "
            f"({'yes' if res['dead_letters']['exact'] else 'NO'})", target="exact"),
    ]
    return rows


def run(opts: Options) -> tuple[dict[str, Any], dict[str, Any], list[Row]]:
    results: dict[str, Any] = {}
    rows: list[Row] = []
    params = {"seed": opts.seed, "events": opts.pick(40_000, 12_000), "targets": TARGETS,
              "failure_points": list(FAILURE_POINTS),
              "rephrase_model": Settings.from_env().rephrase_model}
    for name, lines, truths in populations(opts):
        log(f"{name}: {len(lines):,} lines")
        out, eng = replay(lines, name, opts.progress)
        results[name] = score(out, eng, truths)
        rows += rows_of(name, results[name])
    return params, results, rows
