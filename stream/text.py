"""Utterance normalisation and text-similarity features.

>>> normalize("  What's   the WEATHER in Wilkerson, California?? ")
"what's the weather in wilkerson california"
>>> is_stop_phrase("Never mind!")
True
>>> round(similarity("play jas", "play jazz")["phonetic"], 2)
1.0
"""

from __future__ import annotations

import re
from functools import lru_cache

import jellyfish
from rapidfuzz import fuzz

_PUNCT = re.compile(r"[^\w\s']+")
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")

STOP_PHRASES = frozenset({
    "stop", "cancel", "no", "nope", "never mind", "nevermind", "shut up", "quiet", "be quiet",
    "stop it", "no stop", "stop stop", "cancel that", "that's wrong", "wrong", "no no",
    "not that", "go away", "forget it",
})


# Words whose addition or removal does not change a request (for the ``swap`` feature).
FILLERS = frozenset({
    "please", "the", "a", "an", "some", "me", "my", "can", "could", "would", "you", "hey",
    "um", "uh", "just", "now", "again", "i", "want", "to", "like", "said",
})


@lru_cache(maxsize=1 << 14)
def normalize(text: str) -> str:
    """Lower-case, punctuation removed (apostrophes inside words kept), whitespace collapsed.

    Cached: requests repeat a lot (the head of the distribution is most of the traffic), and
    each turn is normalised twice (parsing, then the stop-phrase check on its normal form)."""
    text = _PUNCT.sub(" ", text.lower())
    if "'" in text:
        text = _LOOSE_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


def is_stop_phrase(text: str) -> bool:
    """A short "stop / cancel / no" turn: the user rejects what the assistant just did."""
    return normalize(text) in STOP_PHRASES


@lru_cache(maxsize=65_536)
def _phonetic_tokens(norm: str) -> frozenset[str]:
    codes = set()
    for token in norm.split():
        # metaphone collapses typical ASR confusions ("jas"/"jazz", "wear"/"where").
        code = jellyfish.metaphone(token) if token.isascii() else token
        codes.add(code or token)
    return frozenset(codes)


def _jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


_FEATURES = ("token", "char", "sorted", "contain", "phonetic", "swap")


def similarity(a: str, b: str) -> dict[str, float]:
    """Similarity features of two *normalised* utterances, each in [0, 1].

    ``token``: Jaccard of word sets; ``char``: normalised Indel similarity of the strings
    (character n-gram-like, robust to small ASR slips); ``sorted``: the same on word-sorted
    strings (word-order changes); ``contain``: share of the shorter utterance's words that
    the longer one has (additions such as "... audiobook"); ``phonetic``: Jaccard of
    metaphone codes (near-homophones); ``swap``: 1 when both sides have words the other
    lacks and those words do not sound or look alike ("add milk ..." -> "add eggs ..." is a
    new request with another slot value, "play jas" -> "play jazz" is not a swap).

    A fresh dict each call (callers add their own features to it) from cached values.
    """
    return dict(zip(_FEATURES, _similarity(a, b), strict=True))


@lru_cache(maxsize=1 << 15)
def _similarity(a: str, b: str) -> tuple[float, ...]:
    """``similarity``'s values in ``_FEATURES`` order. Cached: the same pairs of requests
    come up again and again (the head of the distribution, and its usual rephrasings), and
    the string metrics are most of the cost of scoring a pair."""
    ta, tb = set(a.split()), set(b.split())
    inter = len(ta & tb)
    only_a, only_b = ta - tb - FILLERS, tb - ta - FILLERS
    swap = 0.0
    if only_a and only_b:
        da, db = " ".join(sorted(only_a)), " ".join(sorted(only_b))
        if fuzz.ratio(da, db) < 60.0 and not (_phonetic_tokens(da) & _phonetic_tokens(db)):
            swap = 1.0
    return (
        inter / len(ta | tb) if ta or tb else 1.0,
        fuzz.ratio(a, b) / 100.0,
        fuzz.token_sort_ratio(a, b) / 100.0,
        inter / min(len(ta), len(tb)) if ta and tb else 0.0,
        _jaccard(_phonetic_tokens(a), _phonetic_tokens(b)),
        swap,
    )
