"""The synthetic stream: determinism, ordering, committed sample, and truth that matches the
detector's definitions when re-derived independently from the raw events."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.datasets.synth import (
    MALFORMED,
    STOPS,
    Probs,
    default_utterances,
    generate,
    main,
    normalize,
    summarize,
    vocabulary,
)
from tests.scale import scaled

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample.jsonl"
SAMPLE_TRUTH = ROOT / "data" / "sample-truth.jsonl"
SAMPLE_CMD = ["--events", "4000", "--devices", "300", "--malformed", "25", "--seed", "7"]
SAMPLE_KW: dict[str, Any] = {"n_events": 4000, "n_devices": 300, "malformed": 25, "seed": 7}
MIN_TS, MAX_TS = 946_684_800_000, 4_102_444_800_000
STOP_NORMS = {normalize(s) for s in STOPS}
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
Pairs = list[tuple[bytes, dict[str, Any]]]


def _load(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


@pytest.fixture(scope="module")
def sample() -> Pairs:
    lines, truths = _load(SAMPLE), _load(SAMPLE_TRUTH)
    assert len(lines) == len(truths)
    return [(line, orjson.loads(t)) for line, t in zip(lines, truths, strict=True)]


def _ts_ok(v: Any) -> bool:
    return type(v) is int and MIN_TS <= v <= MAX_TS


def _text_ok(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= 4096 and not CONTROL.search(v)


def _parse(line: bytes) -> dict[str, Any] | None:
    """An independent schema-v1 check: the event, or None if a validator must reject it."""
    try:
        ev = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(ev, dict) or not _ts_ok(ev.get("ts")):
        return None
    if ev.get("type") == "watermark":
        return ev
    required = {"turn": ("event_id", "device_id", "utterance"),
                "feedback": ("event_id", "device_id", "ref_event_id", "kind", "value")}
    fields = required.get(ev.get("type"))
    if fields is None or not all(_text_ok(ev.get(f)) and ev[f].strip() for f in fields):
        return None
    if ev["type"] == "feedback" and not (
            ev["kind"] == "teach" or ev["kind"] == "satisfaction"
            and ev["value"] in ("positive", "negative")):
        return None
    return ev


def check_stream(pairs: Pairs, n_events: int, malformed: int, watermark: bool = True) -> None:
    """Everything the truth claims, re-derived from the raw lines with the detector's rules."""
    assert len(pairs) == n_events + malformed + watermark
    events: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for line, truth in pairs:
        ev = _parse(line)
        assert (ev is None) == ("malformed" in truth), (line[:200], truth)
        if ev is not None and ev["type"] != "watermark":
            events.append((ev, truth))
    assert sum("malformed" in t for _, t in pairs) == malformed
    assert len(events) == n_events
    stamps = [ev["ts"] for ev, _ in events]
    assert stamps == sorted(stamps)
    if watermark:
        wm = orjson.loads(pairs[-1][0])
        assert wm == {"type": "watermark", "ts": pairs[-1][1]["watermark"]}
        assert not stamps or wm["ts"] >= stamps[-1] + 600_000
    ids = [ev["event_id"] for ev, _ in events]
    assert len(ids) == len(set(ids))

    turns: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    by_id: dict[str, dict[str, Any]] = {}
    negative: set[str] = set()
    for ev, truth in events:
        assert truth["event_id"] == ev["event_id"]
        if ev["type"] == "feedback":
            ref = by_id[ev["ref_event_id"]]  # an earlier turn ...
            assert ref["device_id"] == ev["device_id"]  # ... of the same device
            assert ref["tts_end_ts"] < ev["ts"] <= ref["tts_end_ts"] + 30_000
            assert truth == {k: ev[k] for k in ("event_id", "ref_event_id", "kind", "value")}
            if ev["kind"] == "satisfaction" and ev["value"] == "negative":
                negative.add(ev["ref_event_id"])
            continue
        assert truth["device_id"] == ev["device_id"]
        assert truth["utterance_norm"] == normalize(ev["utterance"])
        if "tts_start_ts" in ev:
            assert 500 <= ev["tts_start_ts"] - ev["ts"] <= 1500
            assert ev["tts_start_ts"] < ev["tts_end_ts"]
        by_id[ev["event_id"]] = ev
        turns[ev["device_id"]].append((ev, truth))

    rephrased = {t["rephrase_of"] for _, t in events if t.get("rephrase_of")}
    chains: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for device_turns in turns.values():
        for i, (ev, truth) in enumerate(device_turns):
            nxt = device_turns[i + 1][0] if i + 1 < len(device_turns) else None
            barge = "device" if "barge_in_ts" in ev else (
                "timing" if nxt and nxt["ts"] < ev.get("tts_end_ts", 0) else None)
            stop_next = (nxt is not None and normalize(nxt["utterance"]) in STOP_NORMS
                         and nxt["ts"] - ev["ts"] <= 10_000)
            signals = sorted(name for name, on in (
                ("barge_in", barge), ("negative_feedback", ev["event_id"] in negative),
                ("rephrased", ev["event_id"] in rephrased), ("stop_followup", stop_next)) if on)
            assert truth["barge_in"] == barge, truth
            assert truth["signals"] == signals, truth
            assert truth["defective"] == bool(signals)
            if truth["rephrase_of"]:
                prev = by_id[truth["rephrase_of"]]
                assert prev["device_id"] == ev["device_id"]
                assert 0 < ev["ts"] - prev["ts"] <= 45_000
            if truth["chain_id"]:
                chains[truth["chain_id"]].append(truth)
            else:
                assert truth["chain_outcome"] is None and truth["rephrase_of"] is None
            # Nothing restates a request by accident: equal text in the window is a chain.
            norm = truth["utterance_norm"]
            for prev_ev, prev_truth in reversed(device_turns[:i]):
                if ev["ts"] - prev_ev["ts"] > 45_000:
                    break
                if prev_truth["utterance_norm"] == norm and norm not in STOP_NORMS:
                    assert truth["chain_id"] and truth["chain_id"] == prev_truth["chain_id"]
    for members in chains.values():
        assert len(members) >= 2 and members[0]["rephrase_of"] is None
        ids = {m["event_id"] for m in members}
        assert all(m["rephrase_of"] in ids for m in members[1:])
        outcome = "failure" if members[-1]["defective"] else "success"
        assert {m["chain_outcome"] for m in members} == {outcome}


def test_sample_truth_is_consistent(sample: Pairs) -> None:
    check_stream(sample, 4000, 25)


def test_sample_matches_the_command(tmp_path: Path) -> None:
    out, truth = tmp_path / "s.jsonl", tmp_path / "t.jsonl"
    run = subprocess.run([sys.executable, "-m", "stream.datasets.synth", *SAMPLE_CMD,
                          "--out", str(out), "--truth", str(truth)],
                         cwd=ROOT, capture_output=True, check=True)
    assert b"turns" in run.stderr  # the summary
    for mine, committed in ((out, SAMPLE), (truth, SAMPLE_TRUTH)):
        got, want = _load(mine), _load(committed)
        assert len(got) == len(want)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert a == b, f"{committed.name} line {i + 1} drifted: regenerate the sample"


def test_sample_size_and_behaviours(sample: Pairs) -> None:
    assert SAMPLE.stat().st_size < 2_000_000
    s = summarize(t for _, t in sample)
    assert s["devices"] == 300 and s["malformed"] == 25 and s["watermarks"] == 1
    for key in ("behaviour.success", "behaviour.defect", "behaviour.rephrase", "behaviour.stop",
                "behaviour.followup", "behaviour.unknown", "behaviour.silent_defect",
                "barge_in.device", "barge_in.timing", "feedback.positive", "feedback.negative",
                "feedback.teach", "chains.success", "chains.failure", "chains.3plus_attempts"):
        assert s[key] > 0, key
    assert s["barge_in.device"] > s["barge_in.timing"]
    assert {t["malformed"] for _, t in sample if "malformed" in t} == set(MALFORMED)
    norms = {t.get("utterance_norm") for _, t in sample}
    assert {"play harry potter", "play harry potter audiobook", "weather in wilkerson",
            "weather in wilkerson washington", "weather in wilkerson california"} <= norms


def test_personal_phrasing_is_per_device(sample: Pairs) -> None:
    fixes: dict[str, set[str]] = defaultdict(set)
    by_id = {t["event_id"]: t for _, t in sample if "utterance_norm" in t}
    for t in by_id.values():
        base = by_id.get(t["rephrase_of"] or "")
        if base and base["utterance_norm"] == "weather in wilkerson" and not t["defective"]:
            fixes[t["device_id"]].add(t["utterance_norm"].split()[-1])
    states = [s for per_device in fixes.values() for s in per_device]
    assert "california" in states and states.count("washington") > states.count("california")
    assert all(len(s) == 1 for s in fixes.values() if "california" in s)


def test_deterministic() -> None:
    n = scaled(3000, 1000)
    a = [line for line, _ in generate(n, 50, seed=11, malformed=5)]
    b = [line for line, _ in generate(n, 50, seed=11, malformed=5)]
    c = [line for line, _ in generate(n, 50, seed=12, malformed=5)]
    assert a == b and a != c


def test_malformed_lines_do_not_shift_the_stream() -> None:
    clean = [p for p in generate(800, 30, seed=3)]
    dirty = [p for p in generate(800, 30, seed=3, malformed=40)]
    check_stream(dirty, 800, 40)
    assert [p for p in dirty if "malformed" not in p[1]] == clean
    assert {t["malformed"] for _, t in dirty if "malformed" in t} == set(MALFORMED)


def test_final_watermark_optional() -> None:
    pairs = list(generate(100, 5, seed=1, final_watermark=False))
    check_stream(pairs, 100, 0, watermark=False)
    assert list(generate(0, 3)) == [(b'{"type":"watermark","ts":1717200600000}',
                                      {"watermark": 1_717_200_600_000})]


@settings(max_examples=scaled(25, 10), deadline=None)
@given(n=st.integers(1, 400), devices=st.integers(1, 40), seed=st.integers(0, 2**32),
       bad=st.integers(0, 15), defect=st.floats(0, 1), interrupt=st.floats(0, 1),
       device_barge=st.floats(0, 1), followup=st.floats(0, 1), unknown=st.floats(0, 0.5))
def test_truth_consistent_for_any_mix(n: int, devices: int, seed: int, bad: int, defect: float,
                                      interrupt: float, device_barge: float, followup: float,
                                      unknown: float) -> None:
    probs = Probs(defect=defect, interrupt=interrupt, device_barge_in=device_barge,
                  followup=followup, unknown=unknown, long_chain=0.5)
    check_stream(list(generate(n, devices, seed=seed, malformed=bad, probs=probs)), n, bad)


def test_utterance_count_is_reached() -> None:
    # 25 events per utterance and per device at every scale: 50,000 events full, 5,000 quick.
    n_events = scaled(50_000, 5_000)
    n = n_events // 25
    active = {normalize(q.text) for q in vocabulary()[:n]}
    heads = {t["utterance_norm"] for _, t in generate(n_events, n, n_utterances=n, seed=5)
             if t.get("behaviour") == "success"}
    assert heads <= active and len(heads) >= 0.8 * n
    assert default_utterances(50_000) == 5000 and default_utterances(10**7) == len(vocabulary())
    s = summarize(t for _, t in generate(n_events, n, seed=5))
    wanted = default_utterances(n_events)
    assert 0.7 * wanted <= s["distinct_utterances"] <= 2 * wanted


@pytest.mark.slow
def test_large_run_is_fast_and_consistent() -> None:
    # 100k events (full scale) take about two seconds; 1M (benchmarks) about twenty.
    n = scaled(100_000, 5_000)
    check_stream(list(generate(n, 5000, seed=9, malformed=100)), n, 100)


def test_schema_accepts_every_good_line(sample: Pairs) -> None:
    """At full scale every good line of the sample; quick, every line of a shape (type and
    fields) not validated yet and every tenth line (jsonschema: ~0.7 ms a line)."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "schemas" / "interaction-event.v1.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    every = scaled(1, 10)
    shapes: set[tuple[str, frozenset[str]]] = set()
    for i, (line, truth) in enumerate(sample):
        if "malformed" in truth:
            continue
        event = orjson.loads(line)
        shape = (event["type"], frozenset(event))
        if i % every == 0 or shape not in shapes:
            shapes.add(shape)
            validator.validate(event)


def test_normalize() -> None:
    assert normalize("Rock 'n' Roll!") == "rock n roll"
    assert normalize("What\u2019s  the weather in St. Louis?") == "what's the weather in st louis"
    assert normalize("  play   lo-fi_beats ") == "play lofibeats"


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--malformed" in capsys.readouterr().out
