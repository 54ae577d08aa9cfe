"""Collaborative rephrase evidence: bounded online statistics of consecutive requests.

Every time a device makes two consecutive requests ``a`` then ``b`` (normalised, stop turns
skipped) within the rephrase window, one observation is counted once ``b`` is final: whether
``a`` failed visibly (interrupted, a stop turn after it, negative feedback, an unknown intent or
a low ASR/NLU confidence: nothing that depends on a rephrase decision) and whether ``b`` did
not. Every final request also tells what people *mean* by its words: the intent it got when
nothing visibly went wrong; the tip of a chain that ended well tells where its earlier turns
failed (their failure points decided in hindsight, ``stream.failure``), which decides failures
of the same utterance that have no fix to compare with. Across many devices:

- a rephrase ("wake me up at seven" -> "set an alarm for 7 am") gets the intent people mean by
  ``a`` (``alarm``), and requests of that intent follow failures of ``a`` more often than
  requests follow failures in general; a follow-up ("what time is it" -> "who made you") gets
  another intent;
- the same ordered pair recurs, mostly after failures of ``a``.

``support`` turns that into a probability for the device's previous request (or, with
``Settings.rephrase_model``, an online classifier trained on hindsight labels decides once
warm: ``stream.pair_model``); the lexical
scorer (``stream.detectors.RephraseScorer``) still decides alone when there is no evidence (a
cold start, a rare pair) and for older candidates.

**Where it lives**: one ``PairEvidence`` per *input partition*, in stage 1 beside the device
states; in Kafka its rows are entries of stage 1's table (one per row, keys that hash to the
partition, written when changed) and its clock and totals ride with the partition's watermark.
Each partition learns from its own devices (a hash sample of the population). Observations wait
on their device's state (so they are saved with it) and join the counts once the partition has
seen an event later than ``ts + window + lateness`` (``stream.pair_partitions``): ``b`` is final
by then in the worker and in the replay, whose stream watermark runs ahead of a partition's. The
replay keeps one per
partition too (``stream.partition.partition_of`` of the raw device id, as producers key the
input; ``DeviceState.partition`` remembers it, pseudonymised ids included),
so replay and Kafka decide every link on the same counts. A single global table would see every
device but would need a barrier across partitions to stay deterministic.

**Memory**: each table (pairs, intent pairs, meanings, failures) holds at most ``max_pairs``
rows; beyond that the least-counted quarter is dropped at once (lossy counting: heavy hitters
stay, a pair seen once among many is forgotten), counted in ``evictions``.

>>> ev = PairEvidence(max_pairs=100)
>>> for _ in range(2):
...     ev.count("wake me up at seven", "set an alarm for 7 am", "alarm", True, True)
>>> ev.support("wake me up at seven", "set an alarm for 7 am", "alarm", False)
0.55
>>> ev.support("what time is it", "who made you", "who_made_you", False)
0.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from stream import word_meaning
from stream.pair_model import LINK_FAILED, LINK_QUIET, HindsightModel

SEP = "\x1f"  # unit separator: normalised utterances hold no control characters
TABLES = ("pairs", "intents", "meanings", "failures", "words")

MEANING_SHARE = 0.6
"""An intent is what people mean by an utterance when it has this share of its fine plays."""
PAIR_MIN, PAIR_FAILED = 2, 0.4
"""A pair that recurred this often, this often after a failure of its first request."""
LIFT = 0.05
"""How much more often than the base rate an intent must follow failures of ``a``."""
ENTITY_RESOLUTION = "entity_resolution"
"""``stream.failure.ENTITY_RESOLUTION`` (stream.failure imports this module's importers)."""
ENTITY_SHARE = 0.5
"""Share of an utterance's hindsight failures at entity resolution that makes it one whose
entity tends to resolve wrongly (``PairEvidence.resolves_wrongly``)."""
QUICK_S, QUICK_LIFT = 5.0, 0.2
"""A quick reaction to a visible failure (seconds after the response ended) with an intent
that follows failures of ``a`` this much more often than the base rate."""


class PairEvidence:
    """The evidence of one partition: counts, a clock and pointers to waiting observations."""

    __slots__ = ("max_pairs", "pairs", "intents", "meanings", "failures", "words", "clock",
                 "observed", "failed", "evictions", "due", "orphans", "changed", "dropped",
                 "track", "model", "learn")

    def __init__(self, max_pairs: int = 20_000, learn: bool = False) -> None:
        self.max_pairs = max_pairs
        self.learn = learn
        """Train and use the model (``Settings.rephrase_model``)."""
        self.pairs: dict[str, list[Any]] = {}
        """``a SEP b`` -> [observations, ``a`` failed, ``b`` fine]."""
        self.intents: dict[str, list[Any]] = {}
        """``a SEP intent of b`` -> [observations, ``a`` failed]."""
        self.meanings: dict[str, list[Any]] = {}
        """``u`` -> [plays, fine plays, their commonest intent, its Misra-Gries count]."""
        self.failures: dict[str, list[Any]] = {}
        """``u`` -> [its failures decided in hindsight, their commonest failure point, its
        Misra-Gries count] (``failure_profile``)."""
        self.words: dict[str, list[Any]] = {}
        """Word -> the intents fine plays with it got (``stream.word_meaning``)."""
        self.model = HindsightModel()
        """The online classifier learned from this partition's pairs (``stream.pair_model``):
        saved with the clock and totals (``snapshot_meta``)."""
        self.clock = 0
        self.observed = self.failed = 0
        """Observations counted, and those whose first request failed: the base rate."""
        self.evictions = 0
        self.due: list[tuple[int, str]] = []
        """(due, device id) of devices with waiting observations (memory only: rebuilt from
        the device states)."""
        self.orphans: dict[str, list[list[Any]]] = {}
        """Waiting observations of devices expired before they were due (memory only: in the
        worker they are due by the event that expires them, so they never outlive it)."""
        self.changed: set[tuple[str, str]] = set()
        self.dropped: set[tuple[str, str]] = set()
        self.track = False
        """Record changed and dropped rows for table writes (the Kafka worker)."""

    # -- counting --------------------------------------------------------------------------------
    def count(self, a: str, b: str, b_intent: str, a_failed: bool, b_fine: bool,
              pair_x: list[float] | None = None,
              points: list[list[str]] | None = None) -> None:
        """One final request ``b`` (``a`` = "" when no request came before it in the window;
        ``pair_x``: what the pair looked like, ``TurnState.pair_x``; ``points``: [utterance,
        failure point] of the earlier turns of a chain ``b`` ended well, decided in hindsight).
        A pair with a hindsight label (``stream.pair_model``) teaches the model first, on the
        counts before it."""
        if self.learn and a and pair_x and (b_fine or not a_failed):
            self.model.learn(self.features(a, b, b_intent, pair_x), a_failed)
        row = self._row("meanings", b, [0, 0, "", 0])
        row[0] += 1
        if b_fine and b_intent:
            row[1] += 1
            _vote(row, 2, b_intent)
            for w in word_meaning.words(b):
                word_meaning.vote(self._row("words", w, word_meaning.new_row()), b_intent)
        for u, point in points or ():
            row = self._row("failures", u, [0, "", 0])
            row[0] += 1
            _vote(row, 1, point)
        if not a:
            return
        self.observed += 1
        self.failed += a_failed
        row = self._row("pairs", a + SEP + b, [0, 0, 0])
        row[0] += 1
        row[1] += a_failed
        row[2] += b_fine
        if b_intent:
            row = self._row("intents", a + SEP + b_intent, [0, 0])
            row[0] += 1
            row[1] += a_failed

    def _row(self, name: str, key: str, empty: list[Any]) -> list[Any]:
        table: dict[str, list[Any]] = getattr(self, name)
        row = table.get(key)
        if row is None:
            row = table[key] = empty
            if len(table) > self.max_pairs:
                self._prune(name, table)
        if self.track:
            self.changed.add((name, key))
        return row

    def _prune(self, name: str, table: dict[str, list[Any]]) -> None:
        """Drop the least-counted quarter (oldest first among equal counts)."""
        keys = list(table)
        counts = [row[0] for row in table.values()]
        for i in sorted(range(len(keys)), key=counts.__getitem__)[: max(1, len(keys) // 4)]:
            del table[keys[i]]
            if self.track:
                self.changed.discard((name, keys[i]))
                self.dropped.add((name, keys[i]))
        self.evictions += 1

    # -- deciding --------------------------------------------------------------------------------
    def meaning(self, u: str) -> tuple[str, float] | None:
        """(the intent ``u`` usually gets when nothing went wrong, its share), or None."""
        row = self.meanings.get(u)
        if row is None or not row[1] or not row[3]:
            return None
        return row[2], row[3] / row[1]

    def _meant(self, u: str) -> bool:
        """``u`` has a meaning of its own: ``MEANING_SHARE`` of at least
        ``word_meaning.MIN_PLAYS`` fine plays (as many as a word needs)."""
        meaning, row = self.meaning(u), self.meanings.get(u)
        return (meaning is not None and meaning[1] >= MEANING_SHARE and row is not None
                and row[1] >= word_meaning.MIN_PLAYS)

    def failure_profile(self, u: str) -> tuple[str, float] | None:
        """(the failure point that the failures of ``u`` decided in hindsight mostly had, its
        share), or None: a phrasing that fails tends to fail in the same place."""
        row = self.failures.get(u)
        if row is None or not row[2]:
            return None
        return row[1], row[2] / row[0]

    def support(self, a: str, b: str, b_intent: str | None, a_failed: bool,
                reaction_s: float | None = None, a_intent: str | None = None) -> float:
        """Evidence that ``b`` (the device's next request within the window) restates ``a``:
        0.0 (none), or the probability the link is published with.

        - ``b`` got the intent people mean by ``a`` (``MEANING_SHARE``), and ``a`` visibly
          failed now, or ``a`` got another intent now (``a_intent``: misunderstood, even
          confidently), or that intent follows failures of ``a`` more often than requests
          follow failures in this partition (``LIFT``, smoothed towards the base rate);
        - or the pair itself recurred (``recurs``);
        - or ``a``'s words mean the intent ``b`` got and (almost) never the one ``a`` got
          (``stream.word_meaning.restates``: a misunderstood phrasing too rare to have a
          meaning of its own, ``_meant``);
        - or ``a`` visibly failed now, ``b`` came within ``QUICK_S`` of its response
          (``reaction_s``) and the intent ``b`` got follows failures of ``a`` clearly more often
          than requests follow failures (``QUICK_LIFT``): "i need alarmz set for 6am" (misheard,
          never understood, so it has no meaning) -> "create alarm".

        The caller rules out a new slot value in the same frame ("add milk" -> "add eggs")."""
        meaning = self.meaning(a)
        if (meaning is not None and b_intent and meaning[0] == b_intent
                and meaning[1] >= MEANING_SHARE
                and (a_failed or (a_intent is not None and a_intent != b_intent)
                     or self._follows_failures(self.intents.get(a + SEP + b_intent)))):
            return 0.6
        if self.recurs(a, b):
            return 0.55
        if not self._meant(a) and word_meaning.restates(
                map(self.words.get, word_meaning.words(a)), a_intent, b_intent):
            return 0.55
        if (a_failed and b_intent and reaction_s is not None and reaction_s <= QUICK_S
                and self.observed and _lift(self.intents.get(a + SEP + b_intent),
                                            self.failed / self.observed) >= QUICK_LIFT):
            return 0.55
        return 0.0

    def recurs(self, a: str, b: str) -> bool:
        """The ordered pair recurred (``PAIR_MIN``) mostly after failures of ``a``
        (``PAIR_FAILED``): across devices, people who said ``b`` right after ``a`` had
        mostly seen ``a`` fail."""
        row = self.pairs.get(a + SEP + b)
        return row is not None and row[0] >= PAIR_MIN and row[1] >= PAIR_FAILED * row[0]

    def resolves_wrongly(self, a: str, b_intent: str | None) -> bool:
        """``b`` got what people mean by ``a`` and the failures of ``a`` decided in hindsight
        were mostly at entity resolution (``ENTITY_SHARE``): these words tend to get the
        right intent about the wrong thing ("call my sister" -> a call to someone else), so
        the same intent about another thing right after them is the correction, not a new
        request."""
        meaning, profile = self.meaning(a), self.failure_profile(a)
        return (meaning is not None and meaning[0] == b_intent and meaning[1] >= MEANING_SHARE
                and profile is not None and profile[0] == ENTITY_RESOLUTION
                and profile[1] >= ENTITY_SHARE)

    def decide(self, a: str, b: str, b_intent: str | None, a_failed: bool,
               pair_x: list[float], new_value: bool = False,
               a_intent: str | None = None) -> float:
        """The probability the link ``a`` -> ``b`` is published with, or 0.0: the model's
        once it is warm and it reaches ``LINK_FAILED`` / ``LINK_QUIET``, else the rules
        (``support``; never a content-word swap in the same frame: "add milk ..." -> "add
        eggs ...").

        The rules still decide what a warm model rejects because the model's hindsight label
        calls every pair after a quiet failure (a confident wrong answer) a negative: the more
        often a phrasing fails quietly, the more its restatements teach the model that ``b``
        getting what people mean by ``a`` is *no* evidence. The rules' test (the meaning, and
        that intent following failures of ``a`` more often than requests follow failures) does
        not learn from those labels (phrasings a/b: recall 0.834 / 0.807 -> 0.884 / 0.876 at
        the same precision). Beside a warm model they leave alone ``new_value`` pairs after an
        ``a`` that did not visibly fail (``b`` got ``a``'s intent with other slot values:
        "play jazz" -> "play prince"): the meaning test cannot tell them from restatements,
        and the model, which can weigh them, rejected them (synthetic population, where
        follow-ups of one intent with another value are common: precision 0.968 -> 0.973;
        phrasings lose the quiet entity-resolution failures among them, recall 0.910 / 0.906
        -> 0.892 / 0.884), unless the pair itself recurred mostly after failures of ``a``
        (``recurs``): that is evidence about these very words, not about the intent
        (phrasings a/b: ~40 links each, none false), or ``a``'s words tend to resolve the
        wrong thing (``resolves_wrongly``: recall 0.906 / 0.897 -> 0.918 / 0.912, the synthetic
        population's "play jazz" -> "play prince" stay unlinked: its failures are elsewhere).

        After an ``a`` that did not visibly fail, the model links only with evidence about the
        pair (it recurred, its intent followed failures of ``a``, ``b`` got what people mean
        by ``a``): its other features are the pair's look, which every quick follow-up has
        ("set a reminder to pay my taxes" -> "who is your designer"; precision phrasings a/b
        0.965 / 0.964 -> 0.970 / 0.972, synthetic 0.970 -> 0.979, recall 0.003 lower)."""
        if self.learn and self.model.warm:
            x = self.features(a, b, b_intent or "", pair_x)
            p = self.model.proba(x)
            if p >= (LINK_FAILED if a_failed else LINK_QUIET) and (
                    a_failed or x["pair"] or x["intent_fail"] or x["meaning"]):
                return p
            if new_value and not a_failed:
                return 0.55 if not pair_x[2] and (
                    self.recurs(a, b) or self.resolves_wrongly(a, b_intent)) else 0.0
        if pair_x[2]:
            return 0.0
        return self.support(a, b, b_intent, a_failed, pair_x[1], a_intent)

    def features(self, a: str, b: str, b_intent: str, pair_x: list[float]) -> dict[str, float]:
        """The model's features (``stream.pair_model.FEATURES``): the pair's look, then its
        collaborative statistics as lifts over this partition's failure base rate."""
        base = self.failed / self.observed if self.observed else 0.0
        pair = self.pairs.get(a + SEP + b)
        meaning = self.meaning(a)
        return {
            "lex": pair_x[0],
            "react": min(max(pair_x[1], 0.0), 20.0) / 20.0,
            "frame": pair_x[2],
            "pair": math.log1p(pair[0]) / 3.0 if pair else 0.0,
            "pair_fail": _lift(pair, base),
            "intent_fail": _lift(self.intents.get(a + SEP + b_intent) if b_intent else None,
                                 base),
            "meaning": 1.0 if (meaning is not None and meaning[0] == b_intent
                               and meaning[1] >= MEANING_SHARE) else 0.0,
        }

    def _follows_failures(self, row: list[Any] | None) -> bool:
        if row is None or not self.observed:
            return False
        base = self.failed / self.observed
        return (row[1] + 2 * base) / (row[0] + 2) > base + LIFT

    # -- state for changelog-backed tables -------------------------------------------------------
    def take_changes(self) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(changed rows, dropped rows) as (table, key) since the last call."""
        changed, dropped = self.changed, self.dropped
        self.changed, self.dropped = set(), set()
        return changed, dropped

    def snapshot(self, name: str, key: str) -> list[Any] | None:
        table: dict[str, list[Any]] = getattr(self, name)
        return table.get(key)

    def restore(self, name: str, key: str, row: list[Any]) -> None:
        table: dict[str, list[Any]] = getattr(self, name)
        table[key] = list(row)

    def snapshot_meta(self) -> list[Any]:
        """Clock, totals and the model's row: in Kafka they ride with the partition's
        watermark entry, the last write of a batch, so a restored model is the one of the
        restored input offset."""
        meta = [self.clock, self.observed, self.failed, self.evictions]
        return [*meta, *self.model.to_row()] if self.learn else meta

    def restore_meta(self, meta: list[Any]) -> None:
        self.clock, self.observed, self.failed, self.evictions = meta[:4]
        if len(meta) > 4:  # state written before the model had none
            self.model = HindsightModel.from_row(meta[4:])

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.snapshot_meta(), **{n: getattr(self, n) for n in TABLES}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], max_pairs: int = 20_000) -> PairEvidence:
        ev = cls(max_pairs, learn=len(data["meta"]) > 4)
        ev.restore_meta(data["meta"])
        for name in TABLES:
            for key, row in data.get(name, {}).items():  # "words" came later
                ev.restore(name, key, row)
        return ev


def _vote(row: list[Any], at: int, value: str) -> None:
    """One vote for ``value`` in the Misra-Gries majority ``row[at]`` with count
    ``row[at + 1]``: the majority value when there is one (more than half the votes)."""
    if row[at] == value:
        row[at + 1] += 1
    elif row[at + 1] == 0:
        row[at], row[at + 1] = value, 1
    else:
        row[at + 1] -= 1


def _lift(row: list[Any] | None, base: float) -> float:
    """How much more often than ``base`` the row's observations followed a failure of ``a``
    (smoothed towards ``base`` with 2 pseudo-observations; 0 without a row)."""
    if row is None:
        return 0.0
    return (row[1] + 2 * base) / (row[0] + 2) - base
