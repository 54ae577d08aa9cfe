"""Output records: stream names, the ``Output`` envelope and builders with stable field names.

Every record is a plain JSON-serialisable dict. ``Output.key`` is the Kafka message key the
topologies use (and the idempotency key for at-least-once delivery).
"""

from __future__ import annotations

from typing import Any, NamedTuple

BARGE_INS = "barge-ins"
REPHRASES = "rephrases"
DEFECTS = "defects"
DEFECT_RATES = "defect-rates"
TEACHABLE_MOMENTS = "teachable-moments"
DEAD_LETTER = "dead-letter"
REWRITE_TRIGGERS = "rewrite-triggers"
DEFECT_RATE_ALERTS = "defect-rate-alerts"
# Internal stream between stage 1 (per device) and stage 2 (per estimate key).
RATE_UPDATES = "rate-updates"
# Internal stream: one record per finished rephrase chain (input of rewrite mining).
CHAINS = "rephrase-chains"

OUTPUT_STREAMS: tuple[str, ...] = (
    BARGE_INS,
    REPHRASES,
    DEFECTS,
    DEFECT_RATES,
    TEACHABLE_MOMENTS,
    DEAD_LETTER,
    REWRITE_TRIGGERS,
    DEFECT_RATE_ALERTS,
)

KEY_TYPES: tuple[str, ...] = ("utterance", "intent", "domain", "device_type")


class Output(NamedTuple):
    """One record on one output stream."""

    stream: str
    key: str
    record: dict[str, Any]


def rate_key(key_type: str, key: str) -> str:
    """Kafka key of a defect-rate record (compacted topic).

    >>> rate_key("utterance", "play jazz")
    'utterance:play jazz'
    """
    return f"{key_type}:{key}"


def event_ts(out: Output) -> int | None:
    """Event time of the input that triggered ``out`` (for event-to-emit latency)."""
    rec = out.record
    ts = rec.get("ts", rec.get("updated_ts"))
    return ts if isinstance(ts, int) else None
