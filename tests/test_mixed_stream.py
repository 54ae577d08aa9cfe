"""Hostile input at length: a long mixed stream of good and bad events (the generator's
malformed kinds, the nasty-input corpus, late copies) through the in-process engine and a real
Faust worker on the broker, and the replay tool (`feedback-stream produce`) on nasty lines.
The contract is test_fuzz.py's: every input is accounted for exactly once, nothing raises.
"""

from __future__ import annotations

import random
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.datasets.synth import generate
from stream.records import DEAD_LETTER, OUTPUT_STREAMS
from tests.prom import metric_total
from tests.scale import scaled
from tests.test_fuzz import Accountant, corpus, raw_back
from tests.test_kafka_pipeline import canonical
from tests.waits import scrape, wait_until
from topologies.kafka_io import produce_file, read_topic
from topologies.runner import (
    WorkerProcess,
    collect_outputs,
    counts_to_collect,
    demo_settings,
    prepare_topics,
)

# ------------------------------------------------------------------------------------------------
# (3) a long mixed stream: in-process engine and a real Faust worker
# ------------------------------------------------------------------------------------------------
SYNTH_REASON = {  # stream.datasets.synth's malformed kinds -> the reason the engine must give
    "not_json": "invalid_json", "truncated": "invalid_json", "array": "not_object",
    "missing_field": "missing_field", "wrong_type": "wrong_type",
    "unknown_type": "unknown_type", "bad_ts": "bad_timestamp",
    "bad_satisfaction": "invalid_value", "not_utf8": "invalid_utf8",
    "empty_utterance": "missing_field", "control_char": "control_chars",
    "oversized": "field_too_long",
}


def mixed_stream(seed: int = 11) -> tuple[list[bytes], list[str | None]]:
    """~10,500 lines at full scale (~4,000 quick): 8,000 (3,000) generated events, 2,000
    (750) generated bad lines, the corpus, and late events (copies of earlier turns of a
    device, re-stamped 5 minutes in its past).
    Returns the lines and, per line, the reason it must get (None for good lines)."""
    lines: list[bytes] = []
    want: list[str | None] = []
    last_turn: dict[str, dict[str, Any]] = {}
    rng = random.Random(seed)
    late = 0
    for line, truth in generate(scaled(8_000, 3_000), 300, seed=seed,
                                malformed=scaled(2_000, 750)):
        lines.append(line)
        want.append(SYNTH_REASON[truth["malformed"]] if "malformed" in truth else None)
        if truth and truth.get("device_id") and "kind" not in truth and "malformed" not in truth:
            obj = orjson.loads(line)
            if obj.get("type") == "turn":
                previous = last_turn.get(obj["device_id"])
                if previous is not None and rng.random() < 0.02:
                    ghost = dict(previous, event_id=f"late-{late}", ts=obj["ts"] - 300_000)
                    for name in ("tts_start_ts", "tts_end_ts", "barge_in_ts"):
                        ghost.pop(name, None)
                    lines.append(orjson.dumps(ghost))
                    want.append("late")
                    late += 1
                last_turn[obj["device_id"]] = obj
    assert late >= scaled(50, 15)
    watermark = lines.pop()  # keep the final watermark last
    wm_want = want.pop()
    for _, raw, reason in corpus():
        at = rng.randrange(len(lines))
        lines.insert(at, raw)
        want.insert(at, reason)
    lines.append(watermark)
    want.append(wm_want)
    return lines, want


@pytest.fixture(scope="module")
def mixed() -> dict[str, Any]:
    lines, want = mixed_stream()
    acc = Accountant()
    records: dict[str, list[dict]] = {name: [] for name in OUTPUT_STREAMS}
    for raw in lines:
        for out in acc.feed(raw):
            records[out.stream].append(out.record)
    for out in acc.engine.flush():
        records[out.stream].append(out.record)
    return {"lines": lines, "want": want, "acc": acc, "records": records}


def test_mixed_stream_in_process(mixed):
    lines, want, acc = mixed["lines"], mixed["want"], mixed["acc"]
    assert len(lines) >= scaled(10_000, 3_750)
    assert acc.reasons == want  # every bad line its reason, every good line processed
    stats = acc.engine.stats
    assert stats.events[("turn", "ok")] > scaled(5_000, 1_800)
    assert stats.dead_letters["late"] == want.count("late")
    records = mixed["records"]
    assert len(records[DEAD_LETTER]) == sum(r is not None for r in want)
    assert records["defects"] and records["rephrases"] and records["barge-ins"]


@pytest.mark.kafka
def test_mixed_stream_through_a_faust_worker(broker, mixed):
    lines, want = mixed["lines"], mixed["want"]
    uid = f"fuzz-{uuid.uuid4().hex[:6]}"
    s = demo_settings(broker.bootstrap, app_id=f"fs-{uid}", input_topic=f"interactions-{uid}",
                      topic_prefix=f"{uid}.")
    prepare_topics(s)
    expected_n = counts_to_collect(mixed["records"])
    with WorkerProcess(s) as worker:
        produced = produce_file(lines, broker.bootstrap, s.input_topic, progress=False)
        messages = produced.messages
        assert produced.lines == len(lines)
        assert produced.watermarks == 1  # the final one; the corpus' invalid ones go once
        outputs = collect_outputs(s, expected_n, timeout_s=150, worker=worker)
        # Counters are synced after every batch, so they reach the total right after the
        # last batch's outputs (which collect_outputs has seen).
        def all_counted() -> str:
            text = scrape(s.web_port)
            done = sum(metric_total(text, "feedback_stream_events_total", outcome=o)
                       for o in ("ok", "duplicate", "dead_letter")) >= messages
            return text if done else ""

        metrics = wait_until(all_counted, 60, "the worker's counters", worker)
        assert worker.alive(), worker.log_tail()
    # Good lines -> the same records as in-process (order-insensitive, compared the way the
    # pipeline tests do), bad lines -> the same dead letters (raw, reason, error, type, device).
    got, expected = canonical(outputs), canonical(mixed["records"])
    for name in OUTPUT_STREAMS:
        assert got[name] == expected[name], name
    # Exactly one dead letter per bad line, each pointing at the input record it came from.
    inputs = {(r.partition, r.offset): r.value
              for r in read_topic(broker.bootstrap, s.input_topic, timeout_s=2.0,
                                  expected=messages)}
    assert len(inputs) == messages
    dead = outputs[DEAD_LETTER]
    coords = [(d["source"]["partition"], d["source"]["offset"]) for d in dead]
    assert len(set(coords)) == len(dead) == sum(r is not None for r in want)
    for record in dead:
        assert record["source"]["topic"] == s.input_topic
        assert inputs[(record["source"]["partition"], record["source"]["offset"])] == \
            raw_back(record)
    by_raw = Counter((raw_back(d), d["reason"]) for d in dead)
    assert by_raw == Counter((raw, r) for raw, r in zip(lines, want, strict=True)
                             if r is not None)
    # The worker accounted for every message it consumed: ok + duplicate + dead letter.
    consumed = sum(metric_total(metrics, "feedback_stream_events_total", outcome=o)
                   for o in ("ok", "duplicate", "dead_letter"))
    assert consumed == messages  # lines + (partitions - 1) copies of the watermark
    assert metric_total(metrics, "feedback_stream_events_total", outcome="dead_letter") == \
        len(dead)
    for reason, n in Counter(d["reason"] for d in dead).items():
        assert metric_total(metrics, "feedback_stream_dead_letters_total", reason=reason) == n


# ------------------------------------------------------------------------------------------------
# the replay tool (`feedback-stream produce`) on nasty lines
# ------------------------------------------------------------------------------------------------
@pytest.mark.kafka
def test_produce_survives_deeply_nested_lines(broker, unique_topic, tmp_path):
    """`produce` peeks into every line (key, watermark) with orjson.loads, which overflows the
    C stack on ~100k nested objects: the tool dies with SIGSEGV and the rest of the file is
    never sent. It must send the line (the worker dead-letters it as too_deep) and go on."""
    topic = unique_topic("produce-deep")
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b'{"a":' * 120_000 + b"1" + b"}" * 120_000 + b"\n"
                     + b'{"type":"watermark","ts":1717200000000}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "topologies.cli", "produce", str(path), "--bootstrap-servers",
         broker.bootstrap, "--topic", topic, "--partitions", "2", "--no-progress"],
        capture_output=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-1500:]!r}"
    assert len(read_topic(broker.bootstrap, topic, timeout_s=1.0, expected=3)) == 3


@pytest.mark.kafka
def test_produce_sends_invalid_watermark_once(broker, unique_topic):
    """A valid watermark goes to every partition (each partition's engine needs it); an
    invalid one (no ts, bad ts) is just a bad line and must be sent once, else the worker
    writes one dead letter per partition for a single bad input."""
    from topologies.kafka_io import create_topics, produce_file

    topic = unique_topic("produce-wm")
    create_topics(broker.bootstrap, {topic: 4})
    lines = [b'{"type":"watermark","ts":1717200000000}', b'{"type":"watermark"}',
             b'{"type":"watermark","ts":-1}', b'{"type":"watermark","ts":"now"}']
    stats = produce_file(lines, broker.bootstrap, topic, progress=False)
    records = read_topic(broker.bootstrap, topic, timeout_s=1.0, expected=4 + 3)
    assert Counter(r.value for r in records) == Counter(
        {lines[0]: 4, lines[1]: 1, lines[2]: 1, lines[3]: 1})
    assert stats.messages == 7
