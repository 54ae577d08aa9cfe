"""Failure-point attribution: one crafted pair per failure point, plus unknown."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stream.failure import FAILURE_POINTS, FailureThresholds, attribute
from stream.session import TurnState
from stream.settings import Settings
from stream.text import normalize


def turn(text: str, ts: int = 0, **kw: Any) -> TurnState:
    return TurnState(f"e{ts}", ts, text, normalize(text), **kw)


def test_false_wake() -> None:
    # One short word, interrupted 1.5 s after the user started: the assistant woke by mistake.
    wake = turn("huh", 1_000, intent="unknown", asr_confidence=0.9, barge_in_ts=2_500,
                barge_in="device", signals=["barge_in"])
    assert attribute(wake) == "false_wake"
    # Very low ASR confidence on one word, nothing else.
    assert attribute(turn("um", asr_confidence=0.2, signals=["stop_followup"])) == "false_wake"
    # A rephrase means the user did want something.
    assert attribute(wake, turn("play jazz", 4_000, intent="PlayMusic")) != "false_wake"
    # A confident one-word request interrupted late is an unwanted result.
    late = turn("pause", 0, intent="Pause", asr_confidence=0.95, barge_in_ts=6_000,
                signals=["barge_in"])
    assert attribute(late) == "result"


def test_false_wake_uses_response_start_when_known() -> None:
    class WithTts(TurnState):  # forward compatibility: a TurnState that records tts_start_ts
        __slots__ = ("tts_start_ts",)

    t = WithTts("e", 0, "huh", "huh", asr_confidence=0.9, barge_in_ts=4_200,
                signals=["barge_in"])
    t.tts_start_ts = 3_500
    assert attribute(t) == "false_wake"
    t.tts_start_ts = 2_000
    assert attribute(t) == "unknown"


def test_asr() -> None:
    jas = turn("play jas", intent="unknown", asr_confidence=0.45)
    assert attribute(jas, turn("play jazz", 5_000, intent="PlayMusic")) == "asr"
    # Same intent, a near-homophone city: ASR, not entity resolution.
    wilkinson = turn("weather in wilkinson", intent="GetWeather", domain="Weather")
    assert attribute(wilkinson, turn("weather in wilkerson", 5_000, intent="GetWeather",
                                     domain="Weather")) == "asr"
    # No rephrase, but the recogniser itself was unsure of a longer request.
    assert attribute(turn("set a timer for ten minutes", asr_confidence=0.3,
                          intent="SetTimer", signals=["barge_in"])) == "asr"


def test_nlu() -> None:
    hp = turn("play harry potter", intent="PlayVideo", domain="Video", asr_confidence=0.95)
    better = turn("play harry potter audiobook", 6_000, intent="PlayAudiobook", domain="Books")
    assert attribute(hp, better) == "nlu"
    big = turn("turn on the big light", intent="unknown", domain="SmartHome")
    assert attribute(big, turn("turn on the living room lights", 5_000, intent="TurnOn",
                               domain="SmartHome")) == "nlu"
    assert attribute(turn("order my usual from tony's", intent="unknown")) == "nlu"
    assert attribute(turn("play the thing", intent="PlayMusic", nlu_confidence=0.1,
                          signals=["negative_feedback"])) == "nlu"


def test_entity_resolution() -> None:
    wilk = turn("weather in wilkerson", intent="GetWeather", domain="Weather",
                asr_confidence=0.92)
    washington = turn("weather in wilkerson washington", 5_000, intent="GetWeather",
                      domain="Weather")
    assert attribute(wilk, washington) == "entity_resolution"
    milk = turn("add milk to my shopping list", intent="AddToList")
    assert attribute(milk, turn("add oat milk to my shopping list", 4_000,
                                intent="AddToList")) == "entity_resolution"


def test_result() -> None:
    jazz = turn("play jazz", intent="PlayMusic", asr_confidence=0.95)
    assert attribute(jazz, turn("please play jazz", 4_000, intent="PlayMusic")) == "result"
    told = turn("what's the weather", intent="GetWeather", asr_confidence=0.9,
                nlu_confidence=0.9, signals=["negative_feedback"])
    assert attribute(told) == "result"


def test_unknown() -> None:
    # Intents missing: NLU cannot be compared.
    assert attribute(turn("play something nice"), turn("put on some music", 5_000)) == "unknown"
    # Defective only through a rephrase we were not given, nothing else known.
    assert attribute(turn("what's on today", intent="GetSchedule",
                          signals=["rephrased"])) == "unknown"


def test_thresholds_from_settings() -> None:
    th = FailureThresholds.from_settings(Settings(low_asr_confidence=0.2))
    t = turn("set a timer for ten minutes", asr_confidence=0.3, intent="SetTimer",
             signals=["barge_in"])
    assert attribute(t, None, th) == "result"


words = st.sampled_from(["play", "jazz", "jas", "the", "weather", "in", "wilkerson", "stop",
                         "huh", "audiobook", "please"])
texts = st.lists(words, min_size=1, max_size=5).map(" ".join)
intents = st.sampled_from([None, "unknown", "PlayMusic", "GetWeather"])
conf = st.one_of(st.none(), st.floats(0, 1))


@st.composite
def turns(draw: st.DrawFn, ts: int) -> TurnState:
    barge = draw(st.one_of(st.none(), st.integers(ts, ts + 10_000)))
    return turn(draw(texts), ts, intent=draw(intents), asr_confidence=draw(conf),
                nlu_confidence=draw(conf), barge_in_ts=barge,
                signals=draw(st.lists(st.sampled_from(
                    ["barge_in", "rephrased", "negative_feedback", "stop_followup"]),
                    unique=True)))


@given(turns(0), st.one_of(st.none(), turns(5_000)))
def test_always_a_known_point_and_deterministic(t: TurnState, r: TurnState | None) -> None:
    point = attribute(t, r)
    assert point in FAILURE_POINTS and attribute(t, r) == point


def _chain_points(second: dict[str, Any], third: dict[str, Any] | None = None) -> dict[str, str]:
    """Failure points of a chain "call tom" (interrupted) -> second [-> third], replayed."""
    from stream.engine import FeedbackEngine
    from tests.events import by_stream, turn

    eng = FeedbackEngine()
    lines = [turn("a", 0, "call tom", intent="call", slots={"who": "tom"}, asr_confidence=0.9,
                  nlu_confidence=0.9, tts_start_ts=800, tts_end_ts=4_000, barge_in_ts=1_500),
             turn("b", 2_500, "call tom please", **second)]
    if third is not None:
        lines.append(turn("c", 6_000, "call tom now please", **third))
    outs = [o for line in lines for o in eng.process(line)] + eng.flush()
    return {d["event_id"]: d["failure_point"] for d in by_stream(outs).get("defects", [])}


def test_failure_point_in_hindsight_compares_with_the_turn_that_worked() -> None:
    ok = {"asr_confidence": 0.9, "nlu_confidence": 0.9}
    assert _chain_points({"intent": "call", "slots": {"who": "mom"}, **ok}) == {
        "a": "entity_resolution"}
    assert _chain_points({"intent": "call", "slots": {"who": "tom"}, **ok}) == {"a": "result"}
    assert _chain_points({"intent": "message", "slots": {"who": "tom"}, **ok}) == {"a": "nlu"}
    # Decided against the last turn, the one that worked, not the failed one in between.
    second = {"intent": "message", "asr_confidence": 0.9, "nlu_confidence": 0.9,
              "tts_start_ts": 3_300, "tts_end_ts": 9_000, "barge_in_ts": 3_800}
    points = _chain_points(second, {"intent": "call", "slots": {"who": "mom"}, **ok})
    assert points == {"a": "entity_resolution", "b": "nlu"}


def test_unresolved_chain_keeps_the_guess_made_with_its_own_rephrase() -> None:
    failed = {"intent": "call", "slots": {"who": "mom"}, "asr_confidence": 0.9,
              "nlu_confidence": 0.9, "tts_start_ts": 3_300, "tts_end_ts": 9_000,
              "barge_in_ts": 3_800}
    points = _chain_points(failed)
    assert points["a"] == attribute(
        TurnState("a", 0, "call tom", "call tom", intent="call", asr_confidence=0.9,
                  nlu_confidence=0.9, signals=["barge_in", "rephrased"]),
        TurnState("b", 1, "call tom please", "call tom please", intent="call"))


def test_a_turn_heard_much_less_confidently_than_its_fix_is_blamed_on_asr() -> None:
    from stream.failure import attribute_in_hindsight

    misheard = turn("i need alarmz set for 6am", asr_confidence=0.58, intent="recipe",
                    nlu_confidence=0.5, signals=["rephrased"])
    fix = turn("create alarm", 5_000, asr_confidence=0.95, intent="alarm", nlu_confidence=0.9)
    assert attribute_in_hindsight(misheard, fix) == "asr"
    assert attribute(misheard, fix) == "asr"
    # Heard about as confidently as the fix: the words were right, the intent was not.
    heard = turn("i need alarms set for 6am", asr_confidence=0.9, intent="recipe",
                 nlu_confidence=0.5, signals=["rephrased"])
    assert attribute_in_hindsight(heard, fix) == "nlu" == attribute(heard, fix)


def test_history_replaces_a_guess_that_only_says_nothing_earlier_looked_wrong() -> None:
    from stream.failure import with_history

    for weak in ("result", "entity_resolution", "unknown"):
        assert with_history(weak, ("nlu", 0.7)) == "nlu"
    # An unknown or unsure intent is NLU's, unless that text was mostly misheard before.
    assert with_history("nlu", ("asr", 0.5)) == "asr"
    assert with_history("nlu", ("entity_resolution", 0.9)) == "nlu"
    # The turn's own evidence of a misrecognition or a false wake stays.
    assert with_history("asr", ("result", 1.0)) == "asr"
    assert with_history("false_wake", ("nlu", 1.0)) == "false_wake"
    # No history, or no point that had the majority of it.
    assert with_history("result", None) == "result"
    assert with_history("result", ("nlu", 0.4)) == "result"
    assert with_history("result", ("unknown", 1.0)) == "result"  # names no component
    th = FailureThresholds(history_share=0.9)
    assert with_history("result", ("nlu", 0.8), th) == "result"


def test_failure_profile_is_the_majority_point_of_an_utterance() -> None:
    from stream.pairs import PairEvidence

    ev = PairEvidence()
    assert ev.failure_profile("call tom") is None
    for point in ("entity_resolution", "result", "entity_resolution", "entity_resolution"):
        ev.count("", "call tom please", "call", False, True, points=[["call tom", point]])
    assert ev.failure_profile("call tom") == ("entity_resolution", 0.5)  # 3 votes less 1 against
    assert ev.failure_profile("call tom please") is None  # its own chains ended well


def _given_up(history: bool, ts: int = 200_000) -> str:
    """The failure point of "call tom" on device d2, interrupted and not rephrased: after
    device d1's "call tom" was fixed by another name (``history``) or nothing."""
    from stream.engine import FeedbackEngine
    from tests.events import by_stream
    from tests.events import turn as event

    eng = FeedbackEngine(Settings(partitions=1))
    ok = {"intent": "call", "asr_confidence": 0.9, "nlu_confidence": 0.9}
    bad = {**ok, "slots": {"who": "tom"}, "tts_start_ts": 800, "tts_end_ts": 4_000,
           "barge_in_ts": 1_500}
    lines = []
    if history:
        lines = [event("a", 0, "call tom", **bad),
                 event("b", 2_500, "call tom please", slots={"who": "mom"}, **ok)]
    lines.append(event("c", ts, "call tom", "d2", **{
        **bad, "tts_start_ts": ts + 800, "tts_end_ts": ts + 4_000, "barge_in_ts": ts + 1_500}))
    outs = [o for line in lines for o in eng.process(line)] + eng.flush()
    return {d["event_id"]: d["failure_point"] for d in by_stream(outs)["defects"]}["c"]


def test_a_failure_without_a_fix_takes_the_point_its_utterance_had_in_hindsight() -> None:
    # Alone, a confident known intent cut short looks like a bad result ...
    assert _given_up(history=False) == "result"
    # ... but "call tom" failed at entity resolution on another device, found in hindsight.
    assert _given_up(history=True) == "entity_resolution"
    # Not before that chain's observation is due (its tip final everywhere): the same
    # decision in the replay and in a worker.
    assert _given_up(history=True, ts=30_000) == "result"


def test_failure_points_on_the_sample_match_the_truth() -> None:
    """The committed sample (held out: nothing here was fitted on it) replayed in-process:
    0.877 of its detected defects get their true failure point (0.679 before utterance
    histories); the bound sits a little under so that a regression fails."""
    from pathlib import Path

    import orjson

    from stream.engine import FeedbackEngine

    data = Path(__file__).resolve().parent.parent / "data"
    truth = {}
    for line in (data / "sample-truth.jsonl").read_bytes().splitlines():
        t = orjson.loads(line) if line.strip() else None
        if t and t.get("failure_point"):
            truth[t["event_id"]] = t["failure_point"]
    eng = FeedbackEngine()
    outs = [o for line in (data / "sample.jsonl").read_bytes().splitlines()
            for o in eng.process(line)] + eng.flush()
    pairs = [(truth[o.record["event_id"]], o.record["failure_point"]) for o in outs
             if o.stream == "defects" and o.record["event_id"] in truth]
    assert len(pairs) > 700
    assert sum(a == b for a, b in pairs) / len(pairs) >= 0.85


def test_observations_saved_before_they_carried_failure_points_still_count() -> None:
    from stream.pair_partitions import PartitionedEvidence
    from stream.session import DeviceState

    ev = PartitionedEvidence(100, 1_000)
    old = DeviceState("d", observations=[[5, "a", "b", "alarm", 1, 1],
                                         [6, "b", "c", "alarm", 0, 1, 0.5, 2.0, 0.0]])
    new = DeviceState("e", observations=[[7, "", "c", "alarm", 0, 1, [["x", "nlu"]]]])
    for st_ in (old, new):
        ev.import_device(st_)
    ev.advance(ev.partition(0), 10, {"d": old, "e": new}, lambda _: None)
    part = ev.partition(0)
    assert part.meanings["b"][0] == 1 and part.meanings["c"][0] == 2
    assert part.pairs["b\x1fc"][0] == 1 and part.failure_profile("x") == ("nlu", 1.0)
    assert not old.observations and not new.observations
