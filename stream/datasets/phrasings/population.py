"""The population model: goals (intents) with several real phrasings each, their success
probabilities and failure points, and the devices' personal habits.

Phrasings come from ``clinc150-requests.json`` (CLINC150, CC BY 3.0, see ``ATTRIBUTION.md``):
the 150 requests of one intent are different people asking for the same thing in their own
words, so two phrasings of one goal often share no content word.

Every request of an intent belongs to split ``a`` or ``b`` by a stable hash of its text (not
the seed): a population drawn from one split can tune a method, one from the other checks it.

>>> goals = build_goals(random.Random(1), split="a")
>>> len(goals), len(goals[0].phrasings), goals[0].phrasings[0].p_success > 0.9
(34, 6, True)
>>> {split_of(p.text) for g in goals for p in g.phrasings}
{'a'}
>>> sorted({p.failure for g in goals for p in g.phrasings if p.failure})
['asr', 'entity_resolution', 'nlu', 'result']
"""

from __future__ import annotations

import dataclasses
import functools
import random
import zlib
from pathlib import Path
from typing import Any

import orjson

DATA = Path(__file__).with_name("clinc150-requests.json")
SPLITS = ("a", "b", "all")
BROKEN_POINTS = ("asr", "nlu", "entity_resolution", "result")
# Entities the assistant resolves (contact, place, list, device...): a goal with an entity slot
# can fail at entity resolution, and the truth of a hindsight comparison needs a slot value.
ENTITIES = ("mom", "home", "work", "downtown", "the kitchen", "the office", "alex", "sam",
            "the airport", "my list", "chris", "the gym", "the station", "jordan", "the school",
            "the bedroom", "grandma", "the mall", "dad", "the park")


@functools.lru_cache(maxsize=1)
def load_requests() -> dict[str, Any]:
    """The shipped CLINC150 subset (``intents``, ``small_talk``, ``out_of_scope``)."""
    data: dict[str, Any] = orjson.loads(DATA.read_bytes())
    return data


def split_of(text: str) -> str:
    """``a`` or ``b``: a stable hash of the request text, the same for every seed.

    >>> split_of("wake me up at noon tomorrow") in ("a", "b")
    True
    """
    return "ab"[zlib.crc32(text.encode()) & 1]


@dataclasses.dataclass(frozen=True)
class Phrasing:
    text: str
    goal: str
    p_success: float
    """Probability that a turn with this phrasing succeeds (for an ordinary device)."""
    failure: str | None
    """Failure point of a broken phrasing (its failures fail there); None: failures of this
    phrasing are rare and fail anywhere."""
    weight: float
    """Popularity among the goal's phrasings."""
    misheard: str
    """What ASR hears when this phrasing fails at ASR (the same slip every time)."""


@dataclasses.dataclass(frozen=True)
class Goal:
    name: str
    domain: str
    phrasings: tuple[Phrasing, ...]
    weight: float
    entity: bool
    """Whether the goal has an entity slot (and can fail at entity resolution)."""

    @property
    def best(self) -> Phrasing:
        return max(self.phrasings, key=lambda p: p.p_success)


# Sound-alike edits ASR makes on one word (a reproducible slip, not a random typo).
_SOUND_ALIKE = (("ph", "f"), ("ck", "k"), ("ee", "ea"), ("c", "k"), ("s", "z"), ("er", "a"),
                ("th", "d"), ("ou", "o"), ("ay", "ey"), ("i", "e"), ("o", "u"), ("a", "e"))


def mishear(text: str, r: random.Random) -> str:
    """A plausible ASR slip: one longer word changed to a sound-alike spelling, or the last
    word dropped (the user was cut off).

    >>> mishear("set an alarm for seven", random.Random(3)) != "set an alarm for seven"
    True
    """
    words = text.split()
    long = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if long and (len(words) < 4 or r.random() < 0.75):
        i = r.choice(long)
        for a, b in r.sample(_SOUND_ALIKE, len(_SOUND_ALIKE)):
            if a in words[i]:
                words[i] = words[i].replace(a, b, 1)
                return " ".join(words)
        words[i] = words[i][:-1]
        return " ".join(words)
    return " ".join(words[:-1]) if len(words) > 2 else text + " uh"


def build_goals(r: random.Random, split: str = "all", per_goal: int = 6,
                broken: int = 2) -> list[Goal]:
    """One goal per intent: ``per_goal`` phrasings drawn from the split, the first the best
    (success 0.93-0.99), ``broken`` of them broken (success 0.05-0.3, each with a failure
    point, taken in turn so that every point is represented), the others good (0.8-0.95).
    Broken phrasings are popular on purpose: the ones worth a rewrite are asked often."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    data = load_requests()["intents"]
    goals, point = [], 0
    for rank, (name, spec) in enumerate(data.items()):
        pool = sorted({u for u in spec["utterances"] if split in ("all", split_of(u))})
        r.shuffle(pool)
        chosen = pool[:per_goal]
        entity = zlib.crc32(name.encode()) % 2 == 0
        phrasings = []
        for i, text in enumerate(chosen):
            failure: str | None = None
            if i == 0:
                p, w = r.uniform(0.93, 0.99), r.uniform(1.0, 2.5)
            elif i <= broken:
                p, w = r.uniform(0.05, 0.3), r.uniform(0.3, 0.8)
                failure = BROKEN_POINTS[point % len(BROKEN_POINTS)]
                point += 1
                if failure == "entity_resolution" and not entity:
                    failure = "result"
            else:
                p, w = r.uniform(0.8, 0.95), r.uniform(0.3, 1.0)
            phrasings.append(Phrasing(text, name, round(p, 3), failure, w, mishear(text, r)))
        goals.append(Goal(name, spec["domain"], tuple(phrasings), 1.0 / (1 + rank) ** 0.7,
                          entity))
    return goals


def small_talk() -> list[tuple[str, str]]:
    """(intent, request) of the small-talk intents, without ``cancel`` (the engine's stop
    phrases are a fixed list; a real "cancel my last request" would blur the stop truth)."""
    return [(name, u) for name, spec in load_requests()["small_talk"].items() if name != "cancel"
            for u in spec["utterances"]]


def out_of_scope() -> list[str]:
    return list(load_requests()["out_of_scope"])
