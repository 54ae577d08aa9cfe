"""A restatement in other words that got the same intent and slots as the request before it
(``stream.detectors.same_request``): linked without lexical overlap or pair evidence, and only
then."""

from __future__ import annotations

import pytest

from stream.devices import DeviceStage
from stream.schema import Turn

T0 = 1_700_000_000_000


def rephrases(second: dict, gap_ms: int = 4_000, intent: str = "alarm",
              slots: dict | None = None) -> list[tuple[str, str]]:
    """(event_id, rephrase_of) after a confident, uninterrupted first request."""
    stage = DeviceStage()
    first = Turn("e1", "d1", T0, "wake me up at seven", "wake me up at seven",
                 asr_confidence=0.95, intent=intent, nlu_confidence=0.9,
                 slots=slots if slots is not None else {"time": "07:00"}, response="OK.",
                 tts_start_ts=T0 + 800, tts_end_ts=T0 + 2_500)
    text = second.pop("text", "set an alarm for 7 am")
    later = Turn("e2", "d1", T0 + 2_500 + gap_ms, text, text, asr_confidence=0.95,
                 nlu_confidence=0.9, response="OK.", **second)
    out = stage.on_turn(first).outputs + stage.on_turn(later).outputs + stage.flush()
    return [(o.record["event_id"], o.record["rephrase_of"]) for o in out
            if o.stream == "rephrases"]


def test_same_intent_and_slots_in_other_words_is_a_rephrase():
    assert rephrases({"intent": "alarm", "slots": {"time": "07:00"}}) == [("e2", "e1")]


@pytest.mark.parametrize("second", [
    {"intent": "alarm", "slots": {"time": "08:00"}},  # another alarm: a new request
    {"intent": "weather"},  # something else
    {"intent": "alarm"},  # slots on one side only
])
def test_other_intent_or_slots_is_not(second):
    assert rephrases(second) == []


def test_not_after_listening_for_a_while():
    assert rephrases({"intent": "alarm", "slots": {"time": "07:00"}}, gap_ms=30_000) == []


def test_unknown_intents_are_not_the_same_request():
    assert rephrases({"intent": "unknown"}, intent="unknown", slots={}) == []
