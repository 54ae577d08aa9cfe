"""Fit the rephrase scorer's weights with river on generated, labelled turn pairs.

Pairs are built the way ``DeviceStage`` builds candidates (same device, within the window,
earlier turn not a stop turn and not already rephrased).

    python -m bench.fit_rephrase [--events 60000] [--seed 1]

Pairs are (earlier turn, later turn) of one device within the rephrase window, labelled by the
generator's ground truth (``rephrase_of``). The sample stream (seed 7) is not used for fitting,
so evaluating on it is a held-out check. Prints the weights to paste into
``stream.detectors.RephraseScorer.DEFAULT_WEIGHTS`` and precision/recall of both models.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import orjson
from river import linear_model, optim

from stream.datasets import synth
from stream.detectors import RephraseScorer
from stream.schema import Parser, Turn
from stream.session import TurnState
from stream.settings import Settings


def labelled_pairs(n_events: int, seed: int) -> list[tuple[dict[str, float], bool]]:
    scorer, parser, window = RephraseScorer(), Parser(), Settings().rephrase_window_ms
    recent: dict[str, list[TurnState]] = defaultdict(list)
    rephrased: set[str] = set()
    pairs = []
    for raw, truth in synth.generate(n_events, max(50, n_events // 15), seed=seed):
        ev = parser.parse(raw)
        if not isinstance(ev, Turn) or truth is None:
            continue
        turns = [t for t in recent[ev.device_id] if ev.ts - t.ts <= window]
        for prev in turns:
            if prev.stop_turn or prev.event_id in rephrased:
                continue  # the detector never considers these candidates either
            x = scorer.features(prev, ev.norm, ev.intent, ev.ts - prev.ts, ev.domain)
            pairs.append((x, truth.get("rephrase_of") == prev.event_id))
        state = TurnState(ev.event_id, ev.ts, ev.utterance, ev.norm, ev.intent, ev.domain,
                          asr_confidence=ev.asr_confidence, nlu_confidence=ev.nlu_confidence,
                          barge_in=truth.get("barge_in"))
        state.stop_turn = synth.normalize(ev.utterance) in {synth.normalize(s) for s in
                                                            synth.STOPS}
        recent[ev.device_id] = turns + [state]
        if truth.get("rephrase_of"):
            rephrased.add(truth["rephrase_of"])
    return pairs


# Features the fit sees; see RephraseScorer.DEFAULT_BIAS for why the others are hand-set.
UNFITTED = frozenset({"same_intent", "same_domain", "gap_s"})


def evaluate(model, pairs) -> tuple[float, float]:
    tp = fp = fn = 0
    for x, y in pairs:
        p = model.predict_proba_one(x)[True] >= 0.5
        tp += p and y
        fp += p and not y
        fn += y and not p
    return tp / max(1, tp + fp), tp / max(1, tp + fn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    train = labelled_pairs(args.events, args.seed)
    held_out = labelled_pairs(4_000, 7)
    fit_rows = [({k: v for k, v in x.items() if k not in UNFITTED}, y) for x, y in train]
    model = linear_model.LogisticRegression(optimizer=optim.SGD(0.05), l2=1e-4)
    for _ in range(args.epochs):
        for x, y in fit_rows:
            model.learn_one(x, y)
    print(f"{len(train)} training pairs, {sum(y for _, y in train)} rephrases")
    print("weights:", orjson.dumps({k: round(v, 2) for k, v in model.weights.items()}).decode())
    print("bias:", round(model.intercept, 2))
    for name, m in (("shipped default", RephraseScorer()), ("river fit, no gap", model)):
        for split, pairs in (("train", train), ("held-out sample", held_out)):
            p, r = evaluate(m, pairs)
            print(f"{name:>18} {split:>16}: precision {p:.3f} recall {r:.3f}")


if __name__ == "__main__":
    main()
