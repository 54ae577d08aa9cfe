"""An online rephrase classifier trained with hindsight labels (``HindsightModel``).

The stream carries no rephrase labels, but it shows, a little later, how a pair of consecutive
requests ``a`` -> ``b`` of one device turned out. When ``b``'s observation joins the pair
evidence (``stream.pairs``: ``b`` is final everywhere), it is labelled with hindsight:

- **positive**: ``a`` failed visibly (interrupted, a stop turn or negative feedback after it, an
  unknown intent, a low confidence) and ``b`` did not: the user got what ``a`` asked for with
  ``b`` -- what a restatement looks like;
- **negative**: ``a`` went fine: ``b`` is a follow-up, a new request;
- neither (both failed): not learned from.

The label is the instance's own visible failure, so the features exclude it (and everything it
is made of: confidences, barge-ins, feedback). What is left is what the pair *looks like*: its
lexical score (``RephraseScorer``), how soon ``b`` reacted, whether it swaps content words in
the same frame, and the collaborative statistics of the partition (how often the pair and the
intent ``b`` got followed failures of ``a``, whether ``b`` got what people mean by ``a``; not
how often ``a`` itself fails: that feature predicted the label alone and taught the model
nothing about pairs). The classifier (river's ``LogisticRegression``) thus learns which
pairs *typically* come after a failure, and then links pairs of that kind even after a failure
nothing made visible (a confident wrong answer), and leaves follow-ups of successes alone.

Deciding (``PairEvidence.decide`` in ``stream.pairs``, with ``Settings.rephrase_model`` on):
a candidate the lexical scorer rejects is linked when the model's probability reaches
``LINK_FAILED`` (``a`` failed visibly now) or ``LINK_QUIET`` (it did not). Until the model has
learned from ``WARM`` labelled pairs, the partition falls back to the evidence rules
(``PairEvidence.support``): the cold start. Once warm, the rules still link what the model
rejects: its label calls a restatement after a quiet failure a negative, so it underrates the
evidence of quiet failures (``PairEvidence.decide``).

**Determinism and state**: observations join in an order that depends on event time only (see
``stream.pairs``), and river's SGD with constant learning rates is plain float arithmetic in a
fixed feature order, so the replay and every Kafka worker learn the same weights. The weights
live with the partition's evidence (``PairEvidence.snapshot_meta``: in Kafka, in the entry of
the partition's watermark and input offset, written last in each batch) as ``[learned,
intercept, *weights in FEATURES order]``; the model is bounded by its feature count.

>>> m = HindsightModel()
>>> x = dict.fromkeys(FEATURES, 0.0)
>>> for _ in range(50):
...     m.learn({**x, "pair_fail": 0.6}, True)
...     m.learn({**x, "pair_fail": -0.3}, False)
>>> m.proba({**x, "pair_fail": 0.6}) > 0.5 > m.proba({**x, "pair_fail": -0.3})
True
>>> HindsightModel.from_row(m.to_row()).to_row() == m.to_row()
True
"""

from __future__ import annotations

import math
from typing import Any

from river import linear_model, optim, utils

FEATURES = ("lex", "react", "frame", "pair", "pair_fail", "intent_fail", "meaning")
"""Feature order (the saved row's order, and the order river sums them in)."""
LEARNING_RATE, INTERCEPT_RATE = 0.05, 0.01
WARM = 300
"""Labelled pairs a partition learns from before its model decides (the rules do until then)."""
STEP = 0.1
"""Decisions use the weights rounded to this step (``HindsightModel.proba``)."""
LINK_FAILED, LINK_QUIET = 0.2, 0.35
"""Probabilities that link a pair the lexical scorer rejected: after a visible failure of
``a``, and after none (a restatement after a confident wrong answer needs more evidence)."""


class HindsightModel:
    """River's ``LogisticRegression`` over ``FEATURES`` with a row form for the tables."""

    __slots__ = ("lr", "learned")

    def __init__(self) -> None:
        self.lr = linear_model.LogisticRegression(optimizer=optim.SGD(LEARNING_RATE),
                                                  intercept_lr=INTERCEPT_RATE)
        self.learned = 0

    @property
    def warm(self) -> bool:
        return self.learned >= WARM

    def learn(self, x: dict[str, float], positive: bool) -> None:
        self.lr.learn_one(x, positive)
        self.learned += 1

    def proba(self, x: dict[str, float]) -> float:
        """P(positive hindsight label | x), from the weights rounded to ``STEP`` (the
        unrounded weights keep learning). The rounding dates from when a worker killed during
        its state writes could lose a few observations and learn weights a hair off the
        replay's; those writes are all-or-nothing now (``topologies.processors.undo``), and
        the rounding stays because the link thresholds were set with it."""
        w = self.lr._weights
        z = round(self.lr.intercept / STEP) * STEP + sum(
            round(w.get(f, 0.0) / STEP) * STEP * x[f] for f in FEATURES)
        return 1.0 / (1.0 + math.exp(-z))

    def to_row(self) -> list[Any]:
        w = self.lr._weights
        return [self.learned, self.lr.intercept, *(float(w.get(f, 0.0)) for f in FEATURES)]

    @classmethod
    def from_row(cls, row: list[Any]) -> HindsightModel:
        m = cls()
        m.learned, m.lr.intercept = int(row[0]), float(row[1])
        # Insertion order as learn_one builds it (FEATURES order): the same float sums.
        m.lr._weights = utils.VectorDict(dict(zip(FEATURES, map(float, row[2:]), strict=True)))
        return m
