"""Rephrase links beyond the lexical scorer: a restatement in other words that got the same
intent and slots as the request before it (``stream.detectors.same_request``: linked without
lexical overlap or pair evidence, and only then), and the evidence rules beside a warm
classifier (``stream.pairs.PairEvidence.decide``), which leave new slot values alone unless
the pair itself recurred after failures."""

from __future__ import annotations

import pytest

from stream.devices import DeviceStage
from stream.schema import Turn

T0 = 1_700_000_000_000


def rephrases(second: dict, gap_ms: int = 4_000, intent: str = "alarm",
              slots: dict | None = None,
              first: str = "wake me up at seven") -> list[tuple[str, str]]:
    """(event_id, rephrase_of) after a confident, uninterrupted first request."""
    stage = DeviceStage()
    first_turn = Turn("e1", "d1", T0, first, first,
                 asr_confidence=0.95, intent=intent, nlu_confidence=0.9,
                 slots=slots if slots is not None else {"time": "07:00"}, response="OK.",
                 tts_start_ts=T0 + 800, tts_end_ts=T0 + 2_500)
    text = second.pop("text", "set an alarm for 7 am")
    later = Turn("e2", "d1", T0 + 2_500 + gap_ms, text, text, asr_confidence=0.95,
                 nlu_confidence=0.9, response="OK.", **second)
    out = stage.on_turn(first_turn).outputs + stage.on_turn(later).outputs + stage.flush()
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


def test_a_word_swap_with_the_same_slot_values_is_not_a_new_value():
    # "order" -> "book": a swap of content words in the same frame, but NLU found the same
    # request in both (the lexical scorer alone would not link it).
    second = {"text": "book an uber to the zoo", "intent": "uber", "slots": {"to": "zoo"}}
    assert rephrases({**second}, intent="uber", slots={"to": "zoo"},
                     first="order an uber to the zoo") == [("e2", "e1")]
    # Without slot values to compare, the swap may be a new value NLU does not fill.
    assert rephrases({**second, "slots": None}, intent="uber", slots={},
                     first="order an uber to the zoo") == []


def test_not_after_listening_for_a_while():
    assert rephrases({"intent": "alarm", "slots": {"time": "07:00"}}, gap_ms=30_000) == []


def test_unknown_intents_are_not_the_same_request():
    assert rephrases({"intent": "unknown"}, intent="unknown", slots={}) == []


def test_new_value_is_the_same_intent_with_other_slots():
    from stream.detectors import new_value
    from stream.session import TurnState

    def turn(intent: str | None, slots: dict | None) -> TurnState:
        return TurnState("e", 0, "u", "u", intent=intent, slots=slots)

    jazz = turn("PlayMusic", {"genre": "jazz"})
    assert new_value(jazz, turn("PlayMusic", {"artist": "prince"}))
    assert not new_value(jazz, turn("PlayMusic", {"genre": "jazz"}))  # the same request
    assert not new_value(jazz, turn("PlayMusic", None))  # nothing to compare
    assert not new_value(jazz, turn("GetWeather", {"city": "albany"}))  # another intent


def test_rules_link_what_a_warm_model_rejects_but_no_new_slot_value_after_a_quiet_turn():
    from stream.pair_model import FEATURES, HindsightModel
    from stream.pairs import PairEvidence

    ev = PairEvidence(learn=True)
    ev.model = HindsightModel.from_row([300, -3.0, *[0.0] * len(FEATURES)])  # warm, says no
    a, b = "wake me up at seven", "set an alarm for 7 am"
    for _ in range(2):  # the pair recurred, after failures of a
        ev.count(a, b, "alarm", True, True)
    look = [0.0, 2.0, 0.0]  # lexical score, seconds after the response, no word swap
    assert ev.model.warm and ev.model.proba(ev.features(a, b, "alarm", look)) < 0.1
    assert ev.decide(a, b, "alarm", False, look) == 0.55
    # A new slot value after a quiet turn: the pair's own recurrence still links it, the
    # intent people mean by ``a`` alone does not.
    assert ev.decide(a, b, "alarm", False, look, new_value=True) == 0.55
    assert ev.decide(a, b, "alarm", True, look, new_value=True) == 0.55
    for _ in range(5):
        ev.count("", a, "alarm", False, True)
    ev.count(a, "alarm for seven please", "alarm", True, True)  # seen once: no recurrence
    assert ev.decide(a, "alarm for seven please", "alarm", False, look) == 0.0
    assert ev.decide(a, "alarm for seven please", "alarm", False, look, new_value=True) == 0.0


def test_a_request_misunderstood_then_restated_is_linked_by_what_people_mean():
    from stream.pairs import PairEvidence

    ev = PairEvidence()
    a, b = "wake me up at seven", "alarm for seven please"
    for _ in range(5):  # what people mean by ``a`` when it goes well
        ev.count("", a, "alarm", False, True)
    look = [0.0, 2.0, 0.0]
    # ``a`` got ``alarm`` (nothing went wrong), then a new request: no evidence.
    assert ev.decide(a, b, "alarm", False, look, a_intent="alarm") == 0.0
    # ``a`` got another intent, confidently (a quiet NLU failure), and ``b`` got what people
    # mean by ``a``: a restatement.
    assert ev.decide(a, b, "alarm", False, look, a_intent="weather") == 0.6
    # ... but not when ``b`` got something else too.
    assert ev.decide(a, b, "time", False, look, a_intent="weather") == 0.0


def test_a_new_value_after_words_that_resolve_the_wrong_thing_is_a_correction():
    from stream.pair_model import FEATURES, HindsightModel
    from stream.pairs import PairEvidence

    def evidence(point: str) -> PairEvidence:
        ev = PairEvidence(learn=True)
        ev.model = HindsightModel.from_row([300, -3.0, *[0.0] * len(FEATURES)])  # warm, no
        for _ in range(5):  # people mean ``call`` by it; its failures, decided in hindsight
            ev.count("", "ring my sister", "call", False, True, points=[["ring my sister", point]])
        return ev

    look = [0.0, 2.0, 0.0]
    args = ("ring my sister", "call jane", "call", False, look)
    assert evidence("entity_resolution").decide(*args, new_value=True) == 0.55
    # Words that fail elsewhere: another value of the same intent is a new request.
    assert evidence("result").decide(*args, new_value=True) == 0.0
    # b got something else than people mean by a.
    assert evidence("entity_resolution").decide("ring my sister", "play jazz", "music", False,
                                                look, new_value=True) == 0.0


def test_a_rare_request_misunderstood_is_linked_by_what_its_words_mean():
    from stream.pairs import PairEvidence

    ev = PairEvidence()
    for text in ("convert fahrenheit to celsius", "fahrenheit in celsius please",
                 "what is 40 fahrenheit in celsius"):  # other phrasings, gone well
        ev.count("", text, "measurement_conversion", False, True)
    a, b = "what's 32 degrees fahrenheit in celsisus", "how many celsius is 32 fahrenheit"
    look = [0.0, 2.0, 0.0]
    assert ev.meaning(a) is None  # never heard before: no meaning of its own
    # It got an intent its words never come with, confidently, and then the next request
    # got the one they do mean: a restatement.
    assert ev.decide(a, b, "measurement_conversion", False, look, a_intent="directions") == 0.55
    # One play that went without a visible failure (a quiet wrong answer) is no meaning yet:
    # the words still decide.
    ev.count("", a, "smart_home", False, True)
    assert ev.meaning(a) == ("smart_home", 1.0)
    assert ev.decide(a, b, "measurement_conversion", False, look, a_intent="directions") == 0.55
    # It got what its words mean; the next request is something else: a follow-up.
    assert ev.decide(a, "what time is it", "time", False, look,
                     a_intent="measurement_conversion") == 0.0
    # Its words do come with the intent it got: no evidence it was misunderstood.
    for _ in range(3):
        ev.count("", "fahrenheit forecast", "weather", False, True)
    assert ev.decide(a, b, "measurement_conversion", False, look, a_intent="weather") == 0.0


def test_a_warm_model_links_after_a_quiet_request_only_on_evidence_about_the_pair():
    from stream.pair_model import FEATURES, HindsightModel
    from stream.pairs import PairEvidence

    ev = PairEvidence(learn=True)
    ev.model = HindsightModel.from_row([300, 3.0, *[0.0] * len(FEATURES)])  # warm, says yes
    a, b = "set a reminder to pay my taxes", "who is your designer"
    look = [0.0, 2.0, 0.0]
    # Nothing but its look (every follow-up looks like this): not after a quiet request ...
    assert ev.decide(a, b, "who_made_you", False, look) == 0.0
    # ... after a visible failure, the model decides.
    assert ev.decide(a, b, "who_made_you", True, look) > 0.9
    ev.count(a, b, "who_made_you", False, True)  # the pair was seen before
    assert ev.decide(a, b, "who_made_you", False, look) > 0.9
