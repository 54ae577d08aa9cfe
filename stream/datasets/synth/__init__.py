"""Synthetic interaction stream (schema v1) with known ground truth, for tests and benchmarks.

Simulates many voice-assistant devices as one merged log: sessions of turns, rephrase chains,
barge-ins, stop follow-ups, explicit feedback, unknown requests, personal phrasings and hard
negatives (related follow-ups that are not rephrases). Every line comes with a truth dict that
follows the detector's definitions, so detectors can be scored exactly. Pure Python, no Kafka.

Modules: ``vocab`` (constants, behaviour probabilities, request tables), ``records`` (the
devices, sessions and turns the simulation fills), ``sim`` (the simulation), ``generator``
(``generate``, malformed lines, summary, CLI). This package face re-exports their public names;
``python -m stream.datasets.synth`` is the command line.

>>> pairs = list(generate(300, 12, seed=1, malformed=4))
>>> len(pairs), sum(1 for _, t in pairs if "malformed" in t), "watermark" in pairs[-1][1]
(305, 4, True)
>>> normalize("What's the weather in  Wilkerson, 'Washington'?")
"what's the weather in wilkerson washington"
"""

from stream.datasets.synth.generator import (
    MALFORMED,
    Summary,
    default_utterances,
    generate,
    main,
    summarize,
    write,
)
from stream.datasets.synth.vocab import (
    AFFIXES,
    ARTISTS,
    BASE_TS,
    BOOKS,
    CITIES,
    COUNTRIES,
    DURATIONS,
    FAMILIES,
    FAMILY_INDEX,
    FEEDBACK_WINDOW_MS,
    FOLLOW,
    GENRES,
    HEAD,
    HOMOPHONES,
    IMPERATIVE,
    ITEMS,
    NO_SLOT,
    PEOPLE,
    REPHRASE_WINDOW_MS,
    ROOMS,
    SAME_VALUE,
    SESSION_GAP_MIN_MS,
    SIGNALS,
    STOP,
    STOP_WINDOW_MS,
    STOPS,
    SYS,
    SYSTEMATIC,
    TIMES,
    UNK,
    UNKNOWN,
    WORDS,
    Family,
    Probs,
    Req,
    Systematic,
    normalize,
    vocabulary,
)

__all__ = [
    "BASE_TS", "REPHRASE_WINDOW_MS", "STOP_WINDOW_MS", "FEEDBACK_WINDOW_MS", "SESSION_GAP_MIN_MS",
    "SIGNALS", "Probs", "GENRES", "ARTISTS", "CITIES", "DURATIONS", "TIMES", "ROOMS", "PEOPLE",
    "COUNTRIES", "ITEMS", "BOOKS", "WORDS", "NO_SLOT", "Family", "FAMILIES", "FAMILY_INDEX",
    "AFFIXES", "IMPERATIVE", "FOLLOW", "SAME_VALUE", "Systematic", "SYSTEMATIC", "STOPS",
    "UNKNOWN", "HOMOPHONES", "HEAD", "normalize", "Req", "SYS", "STOP", "UNK", "vocabulary",
    "MALFORMED", "default_utterances", "generate", "Summary", "summarize", "write", "main",
]
