"""One rewrite layer's thresholds and caps, and the ``rephrase-chains`` record it learns from.

>>> RewriteConfig(min_support=2).min_support
2
>>> parse_chain({"device_id": "d", "utterances": ["a", "b"], "outcome": "success", "ts": 1})
(['a', 'b'], True, 1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from stream.settings import Settings


@dataclasses.dataclass(frozen=True)
class RewriteConfig:
    """Thresholds and caps of one layer. The defaults are the settings' (``from_settings``
    maps the ``rewrite_*`` settings); tests that want smaller counts say so."""

    min_support: int = 5
    pool_min_support: int = 2
    """Chains a rewrite needs to count towards the utterance's pooled support (see
    ``RewriteMiner._decide``); ``min_support`` or more: no pooling."""
    min_p_success: float = 0.6
    min_gain: float = 0.2
    max_states: int = 200_000
    max_neighbourhood: int = 64
    prior: float = 0.0
    """Pseudo-counts per state, half SUCCESS and half FAILURE."""
    discount: float = 1.0
    """Value of a success one rephrase later (1: plain absorption probabilities)."""
    hysteresis: float = 0.05
    """A published rewrite is kept while within this of the thresholds and of the best."""
    decide_every: int = 1
    """Chains learned between two re-decisions of the affected utterances; 1 = after every
    chain (default)."""

    @classmethod
    def from_settings(cls, settings: Settings, layer: str = "global") -> RewriteConfig:
        """The ``global`` or ``personal`` layer's configuration (``rewrite_*`` settings; the
        personal layer has its own state cap, and does not pool: a device's own fix is one
        phrasing, and pooling its few chains published the population's fix over it)."""
        s = settings
        personal = layer == "personal"
        return cls(min_support=s.rewrite_min_support,
                   pool_min_support=(s.rewrite_min_support if personal
                                     else s.rewrite_pool_min_support),
                   min_p_success=s.rewrite_min_p_success,
                   min_gain=s.rewrite_min_gain,
                   max_states=(s.rewrite_personal_max_states if personal
                               else s.rewrite_max_states),
                   max_neighbourhood=s.rewrite_max_neighbourhood,
                   decide_every=s.rewrite_decide_every)

    def __post_init__(self) -> None:
        if (self.min_support < 1 or self.pool_min_support < 1 or self.max_states < 2
                or self.max_neighbourhood < 2):
            raise ValueError("min_support >= 1, pool_min_support >= 1, max_states >= 2, "
                             "max_neighbourhood >= 2")
        if self.decide_every < 1:
            raise ValueError("decide_every >= 1")
        if not 0.0 < self.discount <= 1.0 or self.prior < 0.0 or self.hysteresis < 0.0:
            raise ValueError("0 < discount <= 1, prior >= 0, hysteresis >= 0")


def parse_chain(chain: Mapping[str, Any]) -> tuple[list[str], bool, int]:
    utts, outcome, ts = chain.get("utterances"), chain.get("outcome"), chain.get("ts")
    device_id = chain.get("device_id")
    if (not isinstance(utts, list) or not utts or not all(isinstance(u, str) and u for u in utts)
            or outcome not in ("success", "failure") or not isinstance(ts, int)
            or not isinstance(device_id, str) or not device_id):
        raise ValueError(f"not a rephrase-chains record: {dict(chain)!r}")
    return utts, outcome == "success", ts
