"""Failure-point attribution: the earliest component that plausibly failed in a defective turn.

``attribute(turn, rephrase)`` looks at the defective turn, the turn that rephrased it (if any)
and their text similarity (``stream.text.similarity``), and applies the first matching rule:

==================  ==========================================================================
point               rule (the first that matches wins) / known limits
==================  ==========================================================================
false_wake          No rephrase; the utterance is near-empty (one word of at most
                    ``false_wake_max_chars`` chars); and the user interrupted quickly (within
                    ``false_wake_barge_ms`` of the response start, or ``false_wake_turn_barge_ms``
                    of the turn start when the response start is unknown) or the ASR
                    confidence is below ``very_low_asr_confidence``.
                    *Limits*: a real one-word request ("pause") answered wrongly and cut off
                    at once looks the same; a false wake transcribed as a phrase is missed.
asr                 With a rephrase: it substitutes words for ones that sound or look alike
                    (both sides have content words the other lacks, not a ``swap``, and
                    metaphone similarity >= ``asr_phonetic`` or char similarity >= ``asr_char``
                    or the original's ASR confidence was low), or the rephrase was heard
                    ``asr_margin`` more confidently. Without one: the original's ASR
                    confidence is below ``low_asr_confidence``.
                    *Limits*: ASR dropping a word ("play taylor" for "play taylor swift") is
                    taken for entity resolution; a user fixing their own slip blames ASR.
nlu                 The original's intent is unknown, or its NLU confidence is below
                    ``low_nlu_confidence``, or the rephrase got another known intent or domain.
                    *Limits*: without a rephrase, a confident wrong intent ("play harry
                    potter" -> video) is taken for ``result``; the rephrase's intent is
                    assumed right.
entity_resolution   The rephrase kept the intent but changed content words (fillers such as
                    "please", "the" do not count).
                    *Limits*: a synonym rephrase with the same intent lands here too.
result              The rephrase kept intent and content words (a plain repeat); or no
                    rephrase, a known intent with no low confidence, and the user was unhappy
                    (barge-in, negative feedback, stop follow-up).
                    *Limits*: a wrong item and a right item the user disliked look the same.
unknown             Anything else, e.g. a rephrase where an intent is missing.
==================  ==========================================================================

**Hindsight** (``attribute_in_hindsight``): a defective turn whose rephrase chain ends in a
turn that went well is decided when the chain ends, against that turn rather than its
immediate rephrase: low ASR confidence, a fix heard ``asr_margin`` more confidently or a
sound-alike fix -> ``asr``; another intent -> ``nlu``; the same intent with other slot values
-> ``entity_resolution``; same intent and slots -> ``result``. A chain that ends in a failure
keeps the table's guess with the turn's own rephrase; a turn without a rephrase is decided by
the table when it is final.

**History** (``with_history``): a guess made without a fix to compare with (a lone defective
turn, or a chain that ended in a failure) takes the point that the same utterance's failures
mostly had in hindsight, when it was only ``result`` / ``entity_resolution`` / ``unknown`` (or
``nlu`` and the text was mostly misheard). The history is counted per input partition with
the pair evidence (``stream.pairs.PairEvidence.failure_profile``).

Pipeline order decides ties: a misheard word usually also yields a wrong or unknown intent, and
the seed names the *earliest* component, so ASR is checked before NLU. Deterministic: only the
two turns are read. A request that no component could serve is not recognisable here.

>>> from stream.session import TurnState
>>> t = TurnState("e1", 0, "play jas", "play jas", intent="unknown", signals=["rephrased"])
>>> attribute(t, TurnState("e2", 4000, "play jazz", "play jazz", intent="PlayMusic"))
'asr'
>>> attribute(t, None)
'nlu'
"""

from __future__ import annotations

import dataclasses

from stream.detectors import UNHAPPY_SIGNALS, UNKNOWN_INTENTS
from stream.session import TurnState
from stream.settings import Settings
from stream.text import FILLERS, similarity

FALSE_WAKE, ASR, NLU = "false_wake", "asr", "nlu"
ENTITY_RESOLUTION, RESULT, UNKNOWN = "entity_resolution", "result", "unknown"
FAILURE_POINTS = (FALSE_WAKE, ASR, NLU, ENTITY_RESOLUTION, RESULT, UNKNOWN)


@dataclasses.dataclass(frozen=True)
class FailureThresholds:
    low_asr_confidence: float = 0.5
    low_nlu_confidence: float = 0.3
    very_low_asr_confidence: float = 0.3
    false_wake_barge_ms: int = 1_000
    """Interruption this soon after the response started (when ``tts_start_ts`` is known)."""
    false_wake_turn_barge_ms: int = 2_500
    """Otherwise: this soon after the user started speaking (one word + response latency)."""
    false_wake_max_chars: int = 8
    asr_phonetic: float = 0.5
    asr_char: float = 0.75
    asr_margin: float = 0.2
    """The turn that worked (or the rephrase) was heard this much more confidently: ASR."""
    history_share: float = 0.5
    """The utterance's failures decided in hindsight had one point at least this often."""

    @classmethod
    def from_settings(cls, settings: Settings) -> FailureThresholds:
        return cls(low_asr_confidence=settings.low_asr_confidence,
                   low_nlu_confidence=settings.low_nlu_confidence)


def _below(value: float | None, threshold: float) -> bool:
    return value is not None and value < threshold


def _known(intent: str | None) -> bool:
    return bool(intent) and intent not in UNKNOWN_INTENTS


def _false_wake(turn: TurnState, th: FailureThresholds) -> bool:
    words = turn.norm.split()
    if len(words) > 1 or len(turn.norm) > th.false_wake_max_chars:
        return False
    if _below(turn.asr_confidence, th.very_low_asr_confidence):
        return True
    if turn.barge_in_ts is None:
        return False
    # TurnState may not carry the response start; fall back to the turn start then.
    start = getattr(turn, "tts_start_ts", None)
    if start is not None:
        return 0 <= turn.barge_in_ts - start <= th.false_wake_barge_ms
    return 0 <= turn.barge_in_ts - turn.ts <= th.false_wake_turn_barge_ms


def content_diff(a: str, b: str) -> tuple[set[str], set[str]]:
    """Content words only in ``a`` and only in ``b`` (normalised text, fillers ignored).

    >>> content_diff("play the jazz please", "play jazz music")
    (set(), {'music'})
    """
    ta, tb = set(a.split()), set(b.split())
    return ta - tb - FILLERS, tb - ta - FILLERS


def attribute_in_hindsight(turn: TurnState, fixed: TurnState,
                           thresholds: FailureThresholds | None = None) -> str:
    """The failure point of a defective ``turn`` whose rephrase chain ended in ``fixed``, a
    turn that went well: the earliest component whose output differs from the one that
    worked. ASR first (low confidence, or the fix only swapped words for ones that sound or
    look alike); then NLU (another or no intent); then entity resolution (the same intent,
    other slot values); else the result (same intent and slots, the answer was still wrong).
    Without an intent on the fix there is nothing to compare: ``attribute``.

    >>> bad = TurnState("e1", 0, "call mom", "call mom", intent="call", slots={"who": "tom"},
    ...                 asr_confidence=0.9, signals=["rephrased"])
    >>> good = TurnState("e2", 5, "phone my mother", "phone my mother", intent="call",
    ...                  slots={"who": "mom"})
    >>> attribute_in_hindsight(bad, good)
    'entity_resolution'
    """
    th = thresholds or FailureThresholds()
    if (_below(turn.asr_confidence, th.low_asr_confidence) or _heard_better(turn, fixed, th)
            or _sounds_alike(turn, fixed, th)):
        return ASR
    if not _known(fixed.intent):
        return attribute(turn, fixed, th)
    if turn.intent != fixed.intent:
        return NLU
    if (turn.slots or {}) != (fixed.slots or {}):
        return ENTITY_RESOLUTION
    return RESULT


def _heard_better(turn: TurnState, other: TurnState, th: FailureThresholds) -> bool:
    """The other turn's ASR confidence is ``asr_margin`` above this one's: this one was
    misheard, even at a confidence that is not low on its own."""
    return (turn.asr_confidence is not None and other.asr_confidence is not None
            and other.asr_confidence - turn.asr_confidence >= th.asr_margin)


def _sounds_alike(turn: TurnState, other: TurnState, th: FailureThresholds) -> bool:
    """The other turn swapped content words for ones that sound or look alike."""
    only_a, only_b = content_diff(turn.norm, other.norm)
    if not (only_a and only_b):
        return False
    sim = similarity(turn.norm, other.norm)
    return not sim["swap"] and (sim["phonetic"] >= th.asr_phonetic or sim["char"] >= th.asr_char)


WEAK_GUESSES = frozenset((RESULT, ENTITY_RESOLUTION, UNKNOWN))
"""Guesses that only say no earlier component showed a failure: the utterance's history
decides instead."""


def with_history(point: str, profile: tuple[str, float] | None,
                 thresholds: FailureThresholds | None = None) -> str:
    """``point``, a guess made without a fix to compare with, corrected by how the same
    utterance's failures were decided in hindsight (``profile``: their commonest point and its
    share, ``stream.pairs.PairEvidence.failure_profile``). A phrasing that fails keeps failing
    in the same place (the same slip, the same wrong intent, the same unresolvable name), so
    the history replaces a guess that only says nothing earlier looked wrong; and a text that
    was mostly misheard was misheard again, although its intent (unknown, or not confident)
    points at NLU: a misheard request yields a wrong intent too. ASR and false-wake guesses rest
    on the turn's own evidence and stay.

    >>> with_history("result", ("entity_resolution", 0.8))
    'entity_resolution'
    >>> with_history("nlu", ("result", 0.9)), with_history("nlu", ("asr", 0.6))
    ('nlu', 'asr')
    >>> with_history("result", ("nlu", 0.4)), with_history("result", ("unknown", 1.0))
    ('result', 'result')
    """
    th = thresholds or FailureThresholds()
    if profile is None or profile[0] == UNKNOWN or profile[1] < th.history_share:
        return point  # "unknown" names no component: nothing to learn from
    if point in WEAK_GUESSES or (point == NLU and profile[0] == ASR):
        return profile[0]
    return point


def attribute(turn: TurnState, rephrase: TurnState | None = None,
              thresholds: FailureThresholds | None = None) -> str:
    """One of ``FAILURE_POINTS`` for the defective ``turn``; ``rephrase`` is its rephrase."""
    th = thresholds or FailureThresholds()
    if rephrase is None:
        if _false_wake(turn, th):
            return FALSE_WAKE
        if _below(turn.asr_confidence, th.low_asr_confidence):
            return ASR
        if not _known(turn.intent) and turn.intent is not None:
            return NLU
        if _below(turn.nlu_confidence, th.low_nlu_confidence):
            return NLU
        if _known(turn.intent) and UNHAPPY_SIGNALS & set(turn.signals):
            return RESULT
        return UNKNOWN
    only_a, only_b = content_diff(turn.norm, rephrase.norm)
    if only_a and only_b:
        sim = similarity(turn.norm, rephrase.norm)
        sounds_alike = sim["phonetic"] >= th.asr_phonetic or sim["char"] >= th.asr_char
        if not sim["swap"] and (sounds_alike
                                or _below(turn.asr_confidence, th.low_asr_confidence)):
            return ASR
    if _heard_better(turn, rephrase, th):
        return ASR
    if turn.intent is not None and not _known(turn.intent):
        return NLU
    if _below(turn.nlu_confidence, th.low_nlu_confidence):
        return NLU
    if not (_known(turn.intent) and _known(rephrase.intent)):
        return UNKNOWN
    if turn.intent != rephrase.intent or (
            turn.domain and rephrase.domain and turn.domain != rephrase.domain):
        return NLU
    return ENTITY_RESOLUTION if only_a or only_b else RESULT
