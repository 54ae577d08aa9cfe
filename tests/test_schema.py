"""Parser field checks at the edges of their fast paths: the same values and reasons as the
full checks (the fast path must only ever accept what the full checks accept, unchanged)."""

from __future__ import annotations

import orjson
import pytest

from stream.schema import Invalid, Turn, parse
from stream.settings import Settings
from stream.text import normalize

BASE = {"type": "turn", "event_id": "e1", "device_id": "d1", "ts": 1_700_000_000_000,
        "utterance": "play jazz"}


def turn(**fields: object) -> Turn | Invalid:
    return parse(orjson.dumps({**BASE, **fields}))


@pytest.mark.parametrize(("fields", "reason", "error"), [
    ({"event_id": " \t"}, "missing_field", "required field 'event_id' is empty"),
    ({"event_id": ""}, "missing_field", "required field 'event_id' is empty"),
    ({"device_id": None}, "missing_field", "required field 'device_id' is missing"),
    ({"user_id": 7}, "wrong_type", "field 'user_id' must be a string, got int"),
    ({"domain": "a\x07b"}, "control_chars", "field 'domain' contains control characters"),
    ({"response": "x" * 4_097}, "field_too_long",
     "field 'response' has 4097 characters, limit 4096"),
    ({"ts": True}, "wrong_type", "field 'ts' must be an integer (epoch ms), got bool"),
    ({"ts": 1.7e12}, "wrong_type", "field 'ts' must be an integer (epoch ms), got float"),
    ({"barge_in_ts": 5}, "bad_timestamp", "field 'barge_in_ts'=5 is outside "
     f"[{Settings().min_ts}, {Settings().max_ts}] epoch ms"),
    ({"asr_confidence": 1.5}, "invalid_value", "field 'asr_confidence'=1.5 must be within [0, 1]"),
    ({"nlu_confidence": False}, "wrong_type", "field 'nlu_confidence' must be a number, got bool"),
    # Several errors: the first field in check order decides.
    ({"user_id": 1, "asr_confidence": 2.0, "barge_in_ts": "x"}, "wrong_type",
     "field 'user_id' must be a string, got int"),
    ({"asr_confidence": 2.0, "domain": 3}, "invalid_value",
     "field 'asr_confidence'=2.0 must be within [0, 1]"),
])
def test_bad_fields_give_the_first_error(fields: dict, reason: str, error: str) -> None:
    got = turn(**fields)
    assert isinstance(got, Invalid)
    assert (got.reason, got.error) == (reason, error)


def test_values_outside_the_fast_path_that_are_still_valid() -> None:
    # Not printable but not a control character (zero-width space, U+2028): accepted as is.
    got = turn(intent="Play\u200bMusic", response="a\u2028b", event_id="e\u200b",
               asr_confidence=1, nlu_confidence=0, barge_in_ts=1_700_000_000_500,
               context={"device_type": "tv\u200b"})
    assert isinstance(got, Turn)
    assert (got.intent, got.response, got.event_id, got.device_type) == (
        "Play\u200bMusic", "a\u2028b", "e\u200b", "tv\u200b")
    assert got.asr_confidence == 1.0 and type(got.asr_confidence) is float
    assert got.nlu_confidence == 0.0 and type(got.nlu_confidence) is float
    long_ok = turn(response="x" * 4_096)
    assert isinstance(long_ok, Turn) and len(long_ok.response or "") == 4_096


def test_all_fields_land_in_their_turn_attributes() -> None:
    got = turn(user_id="u", session_id="s", asr_confidence=0.5, domain="Music",
               intent="PlayMusic", nlu_confidence=0.25, slots={"genre": "jazz"}, response="ok",
               tts_start_ts=1_700_000_000_100, tts_end_ts=1_700_000_000_200,
               barge_in_ts=1_700_000_000_150, context={"device_type": "speaker"})
    assert got == Turn("e1", "d1", 1_700_000_000_000, "play jazz", "play jazz", "u", "s", 0.5,
                       "Music", "PlayMusic", 0.25, {"genre": "jazz"}, "ok", 1_700_000_000_100,
                       1_700_000_000_200, 1_700_000_000_150, "speaker")


def test_normalize_cache_gives_the_same_text() -> None:
    for text in ["Play  Jazz!", "play jazz", "'quoted' words", "Play  Jazz!"]:
        assert normalize(text) == normalize.__wrapped__(text)


@pytest.mark.parametrize(("slots", "reason", "error"), [
    ({"duration": "x" * 4_097}, "field_too_long",
     "field 'slots.duration' has 4097 characters, limit 4096"),
    ({"n" * 4_097: "one minute"}, "field_too_long",
     "field 'slot name' has 4097 characters, limit 4096"),
    ({"duration": "one\x00minute"}, "control_chars",
     "field 'slots.duration' contains control characters"),
    ({"dur\x1bation": "x"}, "control_chars", "field 'slot name' contains control characters"),
])
def test_slot_names_and_values_have_the_string_limits(slots, reason, error):
    got = turn(slots=slots)
    assert isinstance(got, Invalid) and (got.reason, got.error) == (reason, error)
    assert isinstance(turn(slots={"duration": "x" * 4_096, "unit": ""}), Turn)
