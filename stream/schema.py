"""Input schema v1: parse raw bytes into typed events or a dead-letter reason. Never raises.

>>> ev = parse(b'{"type":"turn","event_id":"e1","device_id":"d1","ts":1700000000000,'
...            b'"utterance":"Play Jazz!"}')
>>> ev.norm, ev.device_type
('play jazz', None)
>>> bad = parse(b'{"type":"turn","event_id":"e1","device_id":"d1","ts":"soon","utterance":"x"}')
>>> bad.reason, bad.error
('wrong_type', "field 'ts' must be an integer (epoch ms), got str")
"""

from __future__ import annotations

import base64
import dataclasses
import re
from itertools import accumulate

import orjson

from stream.settings import Settings
from stream.text import normalize

# Dead-letter reason codes: a small fixed set, safe as a metrics label.
REASONS = (
    "invalid_utf8", "invalid_json", "not_object", "too_large", "too_deep", "missing_field",
    "wrong_type", "invalid_value", "unknown_type", "bad_timestamp", "field_too_long",
    "control_chars", "unknown_turn", "late",
)


@dataclasses.dataclass(slots=True)
class Turn:
    event_id: str
    device_id: str
    ts: int
    utterance: str
    norm: str
    user_id: str | None = None
    session_id: str | None = None
    asr_confidence: float | None = None
    domain: str | None = None
    intent: str | None = None
    nlu_confidence: float | None = None
    slots: dict[str, str] | None = None
    response: str | None = None
    tts_start_ts: int | None = None
    tts_end_ts: int | None = None
    barge_in_ts: int | None = None
    device_type: str | None = None


@dataclasses.dataclass(slots=True)
class Feedback:
    event_id: str
    device_id: str
    ts: int
    ref_event_id: str
    kind: str  # "satisfaction" | "teach"
    value: str


@dataclasses.dataclass(slots=True)
class Watermark:
    """Source heartbeat: no more events older than ``ts`` will follow on this stream."""

    ts: int


Event = Turn | Feedback | Watermark


@dataclasses.dataclass(slots=True)
class Invalid:
    reason: str
    error: str
    raw: bytes | str
    event_type: str = "unknown"
    device_id: str | None = None


class _Reject(Exception):
    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


def raw_field(raw: bytes | str) -> dict[str, str]:
    """The raw input as dead-letter fields: text when it is valid UTF-8, base64 otherwise.

    >>> raw_field(b"\\xff\\x00")
    {'raw': '/wA=', 'raw_encoding': 'base64'}
    """
    if isinstance(raw, str):
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: not representable in a JSON record
            return {"raw": base64.b64encode(raw.encode("utf-8", "surrogatepass")).decode(
                "ascii"), "raw_encoding": "base64"}
        return {"raw": raw, "raw_encoding": "text"}
    try:
        return {"raw": raw.decode("utf-8"), "raw_encoding": "text"}
    except UnicodeDecodeError:
        return {"raw": base64.b64encode(raw).decode("ascii"), "raw_encoding": "base64"}


_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_BRACKET_DELTA = [0] * 256
_BRACKET_DELTA[ord("[")] = _BRACKET_DELTA[ord("{")] = 1
_BRACKET_DELTA[ord("]")] = _BRACKET_DELTA[ord("}")] = -1
# C0 controls, DEL and C1 controls (Unicode category Cc).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _text_depth(data: bytes, limit: int) -> int:
    """Nesting depth of the JSON text ``data`` (exact for valid JSON), without parsing it.

    orjson before 3.10 has no depth limit on ``loads`` and converts recursively: ~100,000
    nested objects (500 KB) overflow the C stack and kill the process (SIGSEGV); 3.10+ stops
    at 1,024 levels. The text is measured first whatever the version, in linear time:
    escaped backslashes and escaped quotes are dropped, then every other quote toggles
    "inside a string", and brackets inside strings do not count.
    (For invalid JSON the number is meaningless but harmless: orjson rejects such text before
    it builds any object.) Depth counts containers: ``{"a": 1}`` is 1 level, ``{"a": []}`` 2.

    >>> _text_depth(b'{"a": [1, {"b": "]]]}\\\\\\"{{"}]}', 1), _text_depth(b'[' * 5000, 16)
    (3, 5000)
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return 0  # cannot be deeper than the limit: skip the scan (the common case)
    outside = b"".join(data.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    brackets = _NOT_BRACKET.sub(b"", outside)
    return max(accumulate(map(_BRACKET_DELTA.__getitem__, brackets)), default=0)


class Parser:
    """Validates raw messages against schema v1 with the limits from ``Settings``."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.s = settings or Settings()
        # Limits read for every field: plain attributes, not two lookups each time.
        self._max_chars = self.s.max_field_chars
        self._min_ts, self._max_ts = self.s.min_ts, self.s.max_ts

    def parse(self, raw: bytes | str) -> Event | Invalid:
        try:
            return self._parse(raw)
        except _Reject as rej:
            obj = getattr(rej, "obj", None)
            etype = obj.get("type") if isinstance(obj, dict) else None
            dev = obj.get("device_id") if isinstance(obj, dict) else None
            return Invalid(
                rej.reason, rej.error, raw,
                etype if isinstance(etype, str) and etype in _PARSERS else "unknown",
                dev if isinstance(dev, str) else None,
            )

    def _parse(self, raw: bytes | str) -> Event:
        if isinstance(raw, str):
            try:
                data = raw.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _Reject("invalid_utf8", f"not valid UTF-8: {exc.reason} at character "
                              f"{exc.start}") from None
        else:
            data = raw
        size = len(data)
        if size > self.s.max_message_bytes:
            raise _Reject("too_large", f"message of {size} bytes exceeds the limit of "
                          f"{self.s.max_message_bytes} bytes")
        if isinstance(raw, bytes):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Reject("invalid_utf8", f"not valid UTF-8: {exc.reason} at byte "
                              f"{exc.start}") from None
        depth = _text_depth(data, self.s.max_json_depth)
        if depth > self.s.max_json_depth:
            raise _Reject("too_deep", f"JSON nested {depth} levels deep, limit "
                          f"{self.s.max_json_depth}")
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            # orjson >= 3.10 stops at 1024 levels ("depth limit exceeded"; older: "recursion")
            message = str(exc).lower()
            reason = "too_deep" if "depth" in message or "recursion" in message else "invalid_json"
            raise _Reject(reason, f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise _Reject("not_object", f"expected a JSON object, got {type(obj).__name__}")
        etype = obj.get("type")
        if etype is None:
            raise _Reject("missing_field", "required field 'type' is missing")
        if not isinstance(etype, str):
            raise _Reject("wrong_type", f"field 'type' must be a string, got "
                          f"{type(etype).__name__}")
        build = _PARSERS.get(etype)
        if build is None:
            known = ", ".join(sorted(_PARSERS))
            raise _Reject("unknown_type", f"unknown event type {etype!r} (expected one of "
                          f"{known})")
        try:
            return build(self, obj)
        except _Reject as rej:
            rej.obj = obj  # type: ignore[attr-defined]
            raise

    # -- field helpers -------------------------------------------------------------------------
    def _str(self, obj: dict, name: str, required: bool = True) -> str | None:
        value = obj.get(name)
        # Fast path for the common valid value; anything else takes the checks below, which
        # decide the exact dead-letter reason.
        if (value.__class__ is str and len(value) <= self._max_chars and value.isprintable()
                and (not required or (value and not value.isspace()))):
            return value
        if value is None:
            if required:
                raise _Reject("missing_field", f"required field {name!r} is missing")
            return None
        if not isinstance(value, str):
            raise _Reject("wrong_type", f"field {name!r} must be a string, got "
                          f"{type(value).__name__}")
        if required and not value.strip():
            raise _Reject("missing_field", f"required field {name!r} is empty")
        if len(value) > self._max_chars:
            raise _Reject("field_too_long", f"field {name!r} has {len(value)} characters, "
                          f"limit {self._max_chars}")
        if not value.isprintable() and _CONTROL.search(value):
            raise _Reject("control_chars", f"field {name!r} contains control characters")
        return value

    def _ts(self, obj: dict, name: str, required: bool = True) -> int | None:
        value = obj.get(name)
        if value.__class__ is int and self._min_ts <= value <= self._max_ts:
            return value  # the common case (bool is not exactly int)
        if value is None:
            if required:
                raise _Reject("missing_field", f"required field {name!r} is missing")
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Reject("wrong_type", f"field {name!r} must be an integer (epoch ms), got "
                          f"{type(value).__name__}")
        if not self._min_ts <= value <= self._max_ts:
            raise _Reject("bad_timestamp", f"field {name!r}={value} is outside "
                          f"[{self._min_ts}, {self._max_ts}] epoch ms")
        return value

    @staticmethod
    def _unit(obj: dict, name: str) -> float | None:
        value = obj.get(name)
        if value.__class__ is float and 0.0 <= value <= 1.0:
            return value  # the common case: skips the slower isinstance checks below
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Reject("wrong_type", f"field {name!r} must be a number, got "
                          f"{type(value).__name__}")
        if not 0.0 <= value <= 1.0:
            raise _Reject("invalid_value", f"field {name!r}={value} must be within [0, 1]")
        return float(value)

    def _turn(self, obj: dict) -> Turn:
        event_id = self._str(obj, "event_id")
        device_id = self._str(obj, "device_id")
        ts = self._ts(obj, "ts")
        utterance = self._str(obj, "utterance")
        tts_start = self._ts(obj, "tts_start_ts", False)
        tts_end = self._ts(obj, "tts_end_ts", False)
        if tts_start is not None and tts_end is not None and tts_end < tts_start:
            raise _Reject("bad_timestamp", f"tts_end_ts={tts_end} is before "
                          f"tts_start_ts={tts_start}")
        slots = obj.get("slots")
        if slots is not None and not (
            isinstance(slots, dict) and all(isinstance(v, str) for v in slots.values())
        ):
            raise _Reject("wrong_type", "field 'slots' must be an object of strings")
        if slots:  # same limits as every other string, names included
            for slot, value in slots.items():
                self._str({"slot name": slot}, "slot name", False)
                self._str({f"slots.{slot}": value}, f"slots.{slot}", False)
        context = obj.get("context")
        if context is not None and not isinstance(context, dict):
            raise _Reject("wrong_type", f"field 'context' must be an object, got "
                          f"{type(context).__name__}")
        device_type = self._str(context, "device_type", False) if context else None
        norm = normalize(utterance)  # type: ignore[arg-type]
        if not norm:
            raise _Reject("missing_field", "field 'utterance' has no words")
        # Positional (field order of Turn): keyword arguments cost more per event; the
        # arguments are checked in this order, which decides the reason of a multi-error event.
        return Turn(
            event_id, device_id, ts, utterance, norm,  # type: ignore[arg-type]
            self._str(obj, "user_id", False),
            self._str(obj, "session_id", False),
            self._unit(obj, "asr_confidence"),
            self._str(obj, "domain", False),
            self._str(obj, "intent", False),
            self._unit(obj, "nlu_confidence"),
            slots,
            self._str(obj, "response", False),
            tts_start,
            tts_end,
            self._ts(obj, "barge_in_ts", False),
            device_type,
        )

    def _feedback(self, obj: dict) -> Feedback:
        event_id = self._str(obj, "event_id")
        device_id = self._str(obj, "device_id")
        ts = self._ts(obj, "ts")
        ref = self._str(obj, "ref_event_id")
        kind = self._str(obj, "kind")
        value = self._str(obj, "value")
        if kind == "satisfaction":
            if value not in ("positive", "negative"):
                raise _Reject("invalid_value", f"satisfaction value must be 'positive' or "
                              f"'negative', got {value!r}")
        elif kind != "teach":
            raise _Reject("invalid_value", f"feedback kind must be 'satisfaction' or 'teach', "
                          f"got {kind!r}")
        return Feedback(event_id, device_id, ts, ref, kind, value)  # type: ignore[arg-type]

    def _watermark(self, obj: dict) -> Watermark:
        return Watermark(self._ts(obj, "ts"))  # type: ignore[arg-type]


_PARSERS = {"turn": Parser._turn, "feedback": Parser._feedback, "watermark": Parser._watermark}


def parse(raw: bytes | str, settings: Settings | None = None) -> Event | Invalid:
    """Parse one message with default (or given) limits."""
    return Parser(settings).parse(raw)
