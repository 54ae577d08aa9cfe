"""Unit tests of the in-process engine on hand-written streams."""

from __future__ import annotations

import pytest

from stream.engine import FeedbackEngine
from stream.settings import Settings
from tests.events import by_stream, feedback, turn, watermark


def run(*raws: bytes, settings: Settings | None = None, flush: bool = True) -> dict:
    eng = FeedbackEngine(settings)
    outputs = []
    for raw in raws:
        outputs += eng.process(raw)
    if flush:
        outputs += eng.flush()
    return by_stream(outputs)


def test_device_reported_barge_in_is_defect():
    out = run(turn("a", 0, "play harry potter", barge_in_ts=1500, tts_end_ts=6000))
    assert out["barge-ins"] == [{"event_id": "a", "device_id": "d1",
                                 "utterance": "play harry potter", "intent": None,
                                 "ts": 1_700_000_000_000, "source": "device"}]
    assert out["defects"][0]["signals"] == ["barge_in"]


def test_timing_barge_in_when_next_turn_starts_before_tts_end():
    out = run(turn("a", 0, "tell me a joke", tts_end_ts=8000),
              turn("b", 3000, "volume up"))
    assert [(b["event_id"], b["source"]) for b in out["barge-ins"]] == [("a", "timing")]
    assert "rephrases" not in out


def test_next_turn_after_tts_end_is_not_a_barge_in():
    out = run(turn("a", 0, "tell me a joke", tts_end_ts=3000), turn("b", 5000, "volume up"))
    assert "barge-ins" not in out
    assert "defects" not in out


def test_rephrase_after_failure_marks_original_defective():
    out = run(turn("a", 0, "play harry potter", intent="PlayVideo", tts_end_ts=3000),
              turn("b", 6000, "play harry potter audiobook", intent="PlayAudiobook"))
    (reph,) = out["rephrases"]
    assert reph["event_id"] == "b" and reph["rephrase_of"] == "a"
    assert reph["gap_ms"] == 6000 and reph["original_utterance"] == "play harry potter"
    assert 0.5 <= reph["score"] <= 1.0
    assert [(d["event_id"], d["signals"]) for d in out["defects"]] == [("a", ["rephrased"])]


@pytest.mark.parametrize("first,second", [
    ("play jazz", "volume up"),
    ("what's the weather", "set a timer for ten minutes"),
    ("add milk to my shopping list", "add eggs to my shopping list"),
    ("play jazz", "play rock"),
])
def test_unrelated_follow_up_is_not_a_rephrase(first, second):
    out = run(turn("a", 0, first, tts_end_ts=2000), turn("b", 5000, second))
    assert "rephrases" not in out and "defects" not in out


def test_rephrase_outside_window_is_not_a_rephrase():
    out = run(turn("a", 0, "play jazz"), turn("b", 46_000, "play jazz"))
    assert "rephrases" not in out
    out = run(turn("a", 0, "play jazz"), turn("b", 45_000, "play jazz"))
    assert out["rephrases"][0]["rephrase_of"] == "a"


def test_window_is_configurable():
    settings = Settings(rephrase_window_ms=10_000)
    assert "rephrases" not in run(turn("a", 0, "play jazz"), turn("b", 11_000, "play jazz"),
                                  settings=settings)


def test_rephrase_needs_same_device():
    out = run(turn("a", 0, "play jazz", device="d1"), turn("b", 3000, "play jazz", device="d2"))
    assert "rephrases" not in out


def test_near_homophone_rephrase():
    out = run(turn("a", 0, "play jas", asr_confidence=0.4, tts_end_ts=2000),
              turn("b", 4000, "play jazz"))
    assert out["rephrases"][0]["rephrase_of"] == "a"


def test_chain_of_three_is_a_teachable_moment_once():
    out = run(turn("a", 0, "play harry potter"), turn("b", 5000, "play harry potter please"),
              turn("c", 10_000, "play the harry potter audiobook"),
              turn("d", 15_000, "play harry potter audiobook"))
    assert [(r["event_id"], r["rephrase_of"]) for r in out["rephrases"]] == [
        ("b", "a"), ("c", "b"), ("d", "c")]
    (moment,) = out["teachable-moments"]
    assert moment["reason"] == "repeated_request"
    assert moment["event_ids"] == ["a", "b", "c"]
    assert moment["utterance"] == "play harry potter"
    # the last turn of the chain succeeded: not defective
    assert {d["event_id"] for d in out["defects"]} == {"a", "b", "c"}


def test_stop_followup_marks_previous_turn_defective():
    out = run(turn("a", 0, "play the news", tts_end_ts=2000), turn("b", 4000, "Stop!"))
    assert out["defects"] == [{"event_id": "a", "device_id": "d1", "utterance": "play the news",
                               "signals": ["stop_followup"],
                               # no intent or confidences to go on: no attribution
                               "failure_point": "unknown", "intent": None, "domain": None,
                               "ts": 1_700_000_000_000}]
    out = run(turn("a", 0, "play the news"), turn("b", 30_000, "stop"))
    assert "defects" not in out


def test_negative_feedback_is_defect_and_teachable():
    out = run(turn("a", 0, "what's the capital of australia"), feedback("f", 9000, "a"))
    assert out["defects"][0]["signals"] == ["negative_feedback"]
    assert out["teachable-moments"][0]["reason"] == "negative_feedback"
    assert out["teachable-moments"][0]["event_ids"] == ["a", "f"]


def test_positive_feedback_is_not_a_defect():
    out = run(turn("a", 0, "what time is it"), feedback("f", 5000, "a", value="positive"))
    assert "defects" not in out and "teachable-moments" not in out


def test_teach_feedback_is_teachable_moment():
    out = run(turn("a", 0, "play harry potter"),
              feedback("f", 5000, "a", kind="teach", value="I meant the audiobook"))
    (moment,) = out["teachable-moments"]
    assert moment["reason"] == "user_teaching" and moment["teach"] == "I meant the audiobook"


def test_feedback_for_unknown_turn_is_dead_lettered():
    out = run(turn("a", 0, "hi"), feedback("f", 1000, "nope"))
    assert out["dead-letter"][0]["reason"] == "unknown_turn"


def test_unknown_concept_repeated():
    out = run(turn("a", 0, "what is a flibbertigibbet", intent="unknown"),
              turn("b", 40_000, "define flibbertigibbet", nlu_confidence=0.1),
              turn("c", 50_000, "what time is it", intent="GetTime", nlu_confidence=0.9))
    (moment,) = out["teachable-moments"]
    assert moment["reason"] == "unknown_concept" and moment["event_ids"] == ["a", "b"]


def test_turn_final_only_after_window_in_event_time():
    eng = FeedbackEngine()
    assert eng.process(turn("a", 0, "play jazz", barge_in_ts=500))  # barge-in record only
    # 45 s later in event time the turn can still be rephrased: not final yet
    out = eng.process(turn("b", 45_000, "volume up"))
    assert not [o for o in out if o.stream == "defects"]
    out = eng.process(turn("c", 45_001, "volume down"))
    assert [o.record["event_id"] for o in out if o.stream == "defects"] == ["a"]


def test_watermark_event_finalises_idle_devices():
    eng = FeedbackEngine()
    eng.process(turn("a", 0, "play jazz", barge_in_ts=500, device="quiet"))
    out = eng.process(watermark(46_000))
    assert [o.record["event_id"] for o in out if o.stream == "defects"] == ["a"]
    # Nothing left to finalise: the end of the stream only ends the batch (its estimate).
    assert [(o.stream, o.key) for o in eng.flush()] == [("defect-rates", "utterance:play jazz")]


def test_stream_watermark_finalises_idle_devices_after_lateness():
    eng = FeedbackEngine()
    eng.process(turn("a", 0, "play jazz", barge_in_ts=500, device="quiet"))
    out = eng.process(turn("z", 45_000 + 60_001, "hello", device="busy"))
    assert [o.record["event_id"] for o in out if o.stream == "defects"] == ["a"]


def test_duplicates_are_dropped_and_counted():
    eng = FeedbackEngine()
    raw = turn("a", 0, "play jazz", barge_in_ts=100)
    assert eng.process(raw)
    assert eng.process(raw) == []
    eng.flush()
    assert eng.stats.events[("turn", "duplicate")] == 1
    assert eng.stage2.get("utterance", "play jazz").plays == 1


def test_late_event_is_dead_lettered():
    eng = FeedbackEngine()
    eng.process(turn("a", 100_000, "play jazz"))
    (dl,) = eng.process(turn("b", 1000, "play rock"))
    assert dl.record["reason"] == "late"
    assert eng.process(turn("c", 50_000, "play blues")) != [] or True  # within lateness: ok
    assert eng.stats.events[("turn", "ok")] == 2


def test_defect_rates_per_key_type():
    out = run(turn("a", 0, "Play Jazz!", intent="PlayMusic", domain="music",
                   context={"device_type": "speaker"}, barge_in_ts=300),
              turn("b", 100_000, "play jazz", intent="PlayMusic", domain="music",
                   context={"device_type": "speaker"}))
    last = {(r["key_type"], r["key"]): r for r in out["defect-rates"]}
    assert set(last) == {("utterance", "play jazz"), ("intent", "PlayMusic"),
                         ("domain", "music"), ("device_type", "speaker")}
    rec = last[("utterance", "play jazz")]
    assert (rec["plays"], rec["defects"]) == (2, 1)
    assert rec["rate"] == 0.5 and rec["low"] < 0.5 < rec["high"]
    assert rec["updated_ts"] == 1_700_000_100_000


def test_estimator_cap_evicts_least_recent():
    eng = FeedbackEngine(Settings(max_tracked_keys=3))
    for i in range(5):
        eng.process(turn(f"e{i}", i * 100_000, f"utterance number {i}", device=f"d{i}"))
    eng.flush()
    assert list(eng.stage2.trackers["utterance"]) == [
        "utterance number 2", "utterance number 3", "utterance number 4"]
    assert eng.stats.evictions["estimator"] == 2


def test_idle_devices_expire():
    eng = FeedbackEngine(Settings(device_idle_ms=60_000))
    eng.process(turn("a", 0, "hi", device="old"))
    eng.process(turn("b", 200_000, "hi", device="new"))
    assert list(eng.stage1.devices.devices) == ["new"]
    assert eng.stats.evictions["device"] == 1


def test_every_signal_record_is_counted_by_kind():
    from pathlib import Path

    eng = FeedbackEngine()
    sample = Path(__file__).resolve().parent.parent / "data" / "sample.jsonl"
    outputs = [o for line in sample.read_bytes().splitlines() for o in eng.process(line)]
    outputs += eng.flush()
    streams = by_stream(outputs)
    kinds = {"barge-ins": "barge_in", "rephrases": "rephrase", "defects": "defect",
             "teachable-moments": "teachable_moment", "rewrite-triggers": "rewrite_trigger",
             "defect-rate-alerts": "drift_alert"}
    for stream, kind in kinds.items():
        assert eng.stats.signals[kind] == len(streams.get(stream, [])), kind
    assert streams["rewrite-triggers"]
    assert sum(eng.stats.failure_points.values()) == len(streams["defects"])


def canonical_records(out: dict) -> dict:
    """Records per stream as sorted JSON (arrival order and dict order aside)."""
    import orjson

    return {name: sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)
            for name, records in out.items()}


CHAIN = [turn("a", 0, "play harry potter", tts_end_ts=6_000),
         turn("b", 5_000, "play harry potter please"),
         turn("c", 10_000, "play the harry potter audiobook"),
         turn("d", 15_000, "play harry potter audiobook"),
         turn("e", 70_000, "what time is it")]


@pytest.mark.parametrize("order", [
    "bacde",  # the original after its rephrase (and barged-in by it, by timing)
    "bcade",  # the root of a chain after the rest: the chain and its teachable moment
    "abcde",  # in order (the reference itself)
], ids=lambda order: order)
def test_out_of_order_turns_within_lateness_give_the_in_order_records(order):
    """The chain has rephrases, a barge-in by timing and a teachable moment.

    Turns of a device arriving out of order (within the allowed lateness) are placed in
    event time: rephrases in either direction, chains (and their teachable moment) built
    across the late turn, barge-ins by timing against the turn's true neighbours.

    Records already emitted are never withdrawn, so arrival order still matters where it
    makes a different link or moment first: in "acb..." c rephrases a before b arrives
    (in order: b rephrases a, c rephrases b), and in "bcda..." the chain b-c-d is already a
    repeated request before a arrives. A turn that is already final (its device's newest
    event is a rephrase window past it) is not linked to a late one either."""
    assert_same_records(CHAIN, [CHAIN["abcde".index(x)] for x in order])


def test_late_rephrase_after_an_unrelated_later_turn():
    a, x, b = (turn("a", 0, "play jazz", tts_end_ts=3_000), turn("x", 20_000, "what time is it"),
               turn("b", 10_000, "play jazz music"))
    assert_same_records([a, b, x], [a, x, b])


def assert_same_records(in_order_events: list, shuffled_events: list) -> None:
    in_order, shuffled = run(*in_order_events), run(*shuffled_events)
    assert in_order["rephrases"] and in_order["defects"]
    want, got = canonical_records(in_order), canonical_records(shuffled)
    for name in want.keys() | got.keys():
        if name != "defect-rates":  # intermediate estimates follow finalisation order
            assert got.get(name) == want.get(name), name
    final = {(r["key_type"], r["key"]): r for r in in_order["defect-rates"]}
    assert {(r["key_type"], r["key"]): r for r in shuffled["defect-rates"]} == final


def test_out_of_order_arrival_was_linked_in_arrival_order_only_before():
    """The case that motivated event-time placement: the original turn arriving after its
    rephrase used to stay unlinked (no rephrase, no defect)."""
    out = run(turn("b", 5_000, "play harry potter please"), turn("a", 0, "play harry potter"))
    assert [(r["event_id"], r["rephrase_of"]) for r in out["rephrases"]] == [("b", "a")]
    assert [d["event_id"] for d in out["defects"]] == ["a"]
