"""Builders for hand-written test events (schema v1)."""

from __future__ import annotations

from typing import Any

import orjson

T0 = 1_700_000_000_000


def turn(eid: str, ts: int, utterance: str, device: str = "d1", **fields: Any) -> bytes:
    """A turn at ``T0 + ts`` ms; ``tts_end`` etc. are given relative to T0 as well."""
    obj: dict[str, Any] = {"type": "turn", "event_id": eid, "device_id": device, "ts": T0 + ts,
                           "utterance": utterance}
    for name in ("tts_start_ts", "tts_end_ts", "barge_in_ts"):
        if name in fields:
            fields[name] = T0 + fields[name]
    obj.update(fields)
    return orjson.dumps(obj)


def feedback(eid: str, ts: int, ref: str, kind: str = "satisfaction", value: str = "negative",
             device: str = "d1") -> bytes:
    return orjson.dumps({"type": "feedback", "event_id": eid, "device_id": device,
                         "ts": T0 + ts, "ref_event_id": ref, "kind": kind, "value": value})


def watermark(ts: int) -> bytes:
    return orjson.dumps({"type": "watermark", "ts": T0 + ts})


def by_stream(outputs: list) -> dict[str, list[dict[str, Any]]]:
    result: dict[str, list[dict[str, Any]]] = {}
    for out in outputs:
        result.setdefault(out.stream, []).append(out.record)
    return result
