"""What people mean by single words: the intents requests containing a word got when nothing
visibly went wrong, kept per partition beside the pair evidence (``stream.pairs``, table
``words``).

An utterance's own meaning (``PairEvidence.meaning``) needs that utterance to have been heard,
and to have gone well, a few times in the partition: a rare phrasing ("what's 32 degrees
fahrenheit in celsisus"), or one that never goes well (a misheard one), has none. Its words
usually have one: "fahrenheit" and "celsius" come with ``measurement_conversion``. A request
that got an intent its words never come with (a confident NLU failure: ``directions``),
followed by a request that got the intent its words do mean, is a restatement
(``restates``); a follow-up keeps the intent its words mean on the first request.

Each word's row is a Misra-Gries summary of ``SLOTS`` intents: ``[fine plays, intent, count,
intent, count, ...]`` (an intent with more than a ``1 / (SLOTS + 1)`` share is always kept;
counts are lower bounds), so a row is bounded, and the table is bounded like the others.

>>> row = new_row()
>>> for intent in ["alarm"] * 6 + ["timer"] * 3 + ["weather"]:
...     vote(row, intent)
>>> row
[10, 'alarm', 6, 'timer', 3, 'weather', 1]
>>> restates([row], "directions", "alarm"), restates([row], "alarm", "timer")
(True, False)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stream.text import FILLERS

SLOTS = 3
MIN_PLAYS = 3
"""A word counts once it came with this many fine plays."""
WORD_SHARE = 0.3
"""The share of the words' votes the second request's intent needs (and the most votes)."""
OTHER_SHARE = 0.05
"""The most the first request's intent may have: its words (almost) never mean it."""


def words(u: str) -> set[str]:
    """The words of a normalised utterance that carry meaning (fillers dropped)."""
    return set(u.split()) - FILLERS


def new_row() -> list[Any]:
    return [0, *("", 0) * SLOTS]


def vote(row: list[Any], intent: str) -> None:
    """One fine play with ``intent``: Misra-Gries over ``SLOTS`` counters."""
    row[0] += 1
    free = None
    for at in range(1, 2 * SLOTS, 2):
        if row[at] == intent and row[at + 1]:
            row[at + 1] += 1
            return
        if free is None and not row[at + 1]:
            free = at
    if free is not None:
        row[free], row[free + 1] = intent, 1
        return
    for at in range(2, 2 * SLOTS + 1, 2):  # no slot for it: every counter loses one
        row[at] -= 1


def scores(rows: Iterable[list[Any] | None]) -> dict[str, float]:
    """Each counted word's share of its fine plays per intent, summed over the words."""
    out: dict[str, float] = {}
    for row in rows:
        if row is None or row[0] < MIN_PLAYS:
            continue
        for at in range(1, 2 * SLOTS, 2):
            if row[at + 1]:
                out[row[at]] = out.get(row[at], 0.0) + row[at + 1] / row[0]
    return out


def restates(rows: Iterable[list[Any] | None], a_intent: str | None,
             b_intent: str | None) -> bool:
    """The words of the first request (their rows) mean ``b_intent`` (the most votes and at
    least ``WORD_SHARE`` of them) and (almost) never ``a_intent``, the intent it got."""
    if not b_intent or a_intent == b_intent:
        return False
    s = scores(rows)
    total = sum(s.values())
    if not total:
        return False
    best = s.get(b_intent, 0.0)
    return (best >= WORD_SHARE * total and best == max(s.values())
            and s.get(a_intent or "", 0.0) <= OTHER_SHARE * total)
