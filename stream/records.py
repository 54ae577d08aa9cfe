"""Output records: stream names, signal names, the ``Output`` envelope and one builder per
record type, so field names and Kafka keys are defined here and nowhere else.

Every record is a plain JSON-serialisable dict. ``Output.key`` is the Kafka message key the
topologies use (and the idempotency key for at-least-once delivery). A new output stream is a
name here, in ``OUTPUT_STREAMS``, and a builder beside the others.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from stream.schema import raw_field
from stream.session import TurnState

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

# Signals on a turn (``defects.signals``); the implicit ones come from ``stream.detectors``.
BARGE_IN = "barge_in"
REPHRASED = "rephrased"
STOP_FOLLOWUP = "stop_followup"
NEGATIVE_FEEDBACK = "negative_feedback"


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


# -- stage 1 ---------------------------------------------------------------------------------
def barge_in(device_id: str, turn: TurnState, source: str) -> Output:
    return Output(BARGE_INS, turn.event_id, {
        "event_id": turn.event_id, "device_id": device_id, "utterance": turn.utterance,
        "intent": turn.intent, "ts": turn.ts, "source": source,
    })


def rephrase(device_id: str, orig: TurnState, new: TurnState, score: float) -> Output:
    return Output(REPHRASES, new.event_id, {
        "event_id": new.event_id, "rephrase_of": orig.event_id, "device_id": device_id,
        "utterance": new.utterance, "original_utterance": orig.utterance,
        "gap_ms": new.ts - orig.ts, "score": round(score, 4),
    })


def teachable_moment(device_id: str, reason: str, event_ids: list[str], utterance: str | None,
                     ts: int, **extra: Any) -> Output:
    record = {"device_id": device_id, "reason": reason, "event_ids": event_ids,
              "utterance": utterance, "ts": ts, **extra}
    return Output(TEACHABLE_MOMENTS, f"{reason}:{event_ids[-1]}", record)


def defect(device_id: str, turn: TurnState, failure_point: str) -> Output:
    return Output(DEFECTS, turn.event_id, {
        "event_id": turn.event_id,
        "device_id": device_id,
        "utterance": turn.utterance,
        "signals": sorted(turn.signals),
        "failure_point": failure_point,
        "intent": turn.intent,
        "domain": turn.domain,
        "ts": turn.ts,
    })


def chain(device_id: str, tip: TurnState, defective: bool, src: dict[str, Any]) -> Output:
    """A finished rephrase chain (internal), ``tip`` its last turn; ``src`` as ``rate_update``."""
    return Output(CHAINS, device_id, {
        "device_id": device_id, "event_ids": tip.chain, "utterances": tip.chain_norms,
        "outcome": "failure" if defective else "success", "ts": tip.ts, **src,
    })


def rate_update(key_type: str, key: str, turn: TurnState, defective: bool,
                src: dict[str, Any]) -> Output:
    """One finalised turn for one estimate key (internal); ``src`` is ``{}`` or
    ``{"src": [input partition, offset]}``."""
    return Output(RATE_UPDATES, rate_key(key_type, key), {
        "key_type": key_type, "key": key, "defective": defective,
        "ts": turn.ts, "event_id": turn.event_id, **src,
    })


# -- stage 2 and rewrite mining --------------------------------------------------------------
def defect_rate(key_type: str, key: str, plays: int, defects: int,
                estimate: tuple[float, float, float], updated_ts: int) -> Output:
    """``estimate`` = (rate, low, high), as ``stream.rates.record_estimate`` rounds them."""
    rate, low, high = estimate
    return Output(DEFECT_RATES, rate_key(key_type, key), {
        "key_type": key_type,
        "key": key,
        "plays": plays,
        "defects": defects,
        "rate": rate,
        "low": low,
        "high": high,
        "updated_ts": updated_ts,
    })


def defect_rate_alert(key_type: str, key: str, old_rate: float, new_rate: float, n_old: int,
                      n_new: int, detected_ts: int, ts: int) -> Output:
    return Output(DEFECT_RATE_ALERTS, f"{key_type}:{key}:{ts}", {
        "key_type": key_type, "key": key,
        "old_rate": round(old_rate, 6), "new_rate": round(new_rate, 6),
        "direction": "up" if new_rate > old_rate else "down",
        "n_old": n_old, "n_new": n_new, "detected_ts": detected_ts, "ts": ts,
    })


def rewrite(utterance: str, rewrite_to: str | None, layer: str, device_id: str | None,
            p_success: float | None, p_success_original: float | None, support: int,
            ts: int) -> dict[str, Any]:
    """A ``rewrite-triggers`` record (``rewrite_to`` None: withdrawn); also what lookups
    return."""
    return {"utterance": utterance, "rewrite": rewrite_to, "layer": layer,
            "device_id": device_id,
            "p_success": None if p_success is None else round(p_success, 6),
            "p_success_original": None if p_success_original is None else round(
                p_success_original, 6),
            "support": support, "ts": ts}


def rewrite_trigger(record: dict[str, Any]) -> Output:
    """``rewrite`` as an output: keyed per layer, device and utterance (compacted topic)."""
    device_id, u = record["device_id"], record["utterance"]
    key = f"global:{u}" if device_id is None else f"personal:{device_id}:{u}"
    return Output(REWRITE_TRIGGERS, key, record)


# -- bad input -------------------------------------------------------------------------------
def dead_letter(reason: str, error: str, raw: bytes | str, event_type: str = "unknown",
                device_id: str | None = None, source: dict[str, Any] | None = None,
                max_raw_bytes: int = 65_536, keep_raw: bool = True) -> Output:
    """A ``dead-letter`` record. Raw inputs over ``max_raw_bytes`` are cut to that size (with
    ``raw_truncated``, the full ``raw_size`` and ``raw_sha256``): a record larger than Kafka's
    message limit could never be published and would stop the worker on every restart.
    ``keep_raw=False`` keeps no byte of the input: ``raw`` is null, with size and SHA-256.

    >>> rec = dead_letter("too_large", "big", b"x" * 10, max_raw_bytes=4).record
    >>> rec["raw"], rec["raw_truncated"], rec["raw_size"]
    ('xxxx', True, 10)
    >>> rec = dead_letter("invalid_json", "bad", b"x" * 10, keep_raw=False).record
    >>> rec["raw"], rec["raw_encoding"], rec["raw_size"], rec["raw_sha256"][:8]
    (None, None, 10, 'fc11d6f2')
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    extra: dict[str, Any] = {}
    if not keep_raw or len(data) > max_raw_bytes:
        extra = {"raw_size": len(data), "raw_sha256": hashlib.sha256(data).hexdigest()}
    if not keep_raw:
        kept: dict[str, Any] = {"raw": None, "raw_encoding": None}
    elif len(data) > max_raw_bytes:
        kept = {**raw_field(data[:max_raw_bytes]), "raw_truncated": True}
    else:
        kept = raw_field(raw)
    record = {"error": error, "reason": reason, **kept, **extra,
              "event_type": event_type, "device_id": device_id, "source": source}
    key = "" if source is None else ":".join(str(v) for v in source.values())
    return Output(DEAD_LETTER, key, record)
