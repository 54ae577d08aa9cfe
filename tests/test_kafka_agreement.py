"""The worker on the embedded broker agrees with the in-process replay on streams unlike the
sample: a sparse stream with long idle gaps, and a stream delivered twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stream.records import DEAD_LETTER, OUTPUT_STREAMS
from stream.settings import Settings
from tests.prom import metric_total
from tests.test_dedupe import PARSED_DEAD_LETTERS, event_count, replay
from tests.test_faults import metrics
from tests.test_faults_delivery import committed_offsets
from tests.test_kafka_pipeline import SAMPLE, canonical, expected_records, pipeline_settings
from tests.test_processors import idle_gap_lines
from topologies.kafka_io import produce_file
from topologies.runner import WorkerProcess, collect_outputs, expected_counts, read_records

pytestmark = pytest.mark.kafka


def test_sparse_stream_through_the_worker_equals_replay(broker, tmp_path: Path):
    """400 devices with hours between sessions, feedback up to 5 minutes late, no final
    watermark in the file: each partition's stream watermark lags the whole stream's, and
    only the end-of-stream watermark finalises the last turns, as the replay's end of file
    does."""
    path = tmp_path / "idle-gaps.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in idle_gap_lines()))
    expected = canonical(expected_records(path))
    settings = pipeline_settings(broker, "sparse")
    with WorkerProcess(settings) as worker:
        stats = produce_file(path, broker.bootstrap, settings.input_topic, progress=False,
                             end_of_stream=True, settings=settings)
        assert stats.end_watermark == stats.newest_ts + settings.rephrase_window_ms + 1
        outputs = collect_outputs(settings, expected_counts(path, Settings()), timeout_s=180,
                                  worker=worker)
    got = canonical(outputs)
    for name in OUTPUT_STREAMS:
        assert got[name] == expected[name], name


def test_stream_produced_twice_into_running_worker_equals_once(broker):
    """The sample produced twice (a topic replay, a producer retrying everything): every
    output equals one delivery's; every repeated event is counted as a duplicate, none is
    `late`, no estimate moves. Malformed lines have no event id and are dead-lettered again."""
    lines = [line for line in SAMPLE.read_bytes().splitlines() if line.strip()]
    records, eng = replay(lines)
    expected = canonical(records)
    invalid = [r for r in records[DEAD_LETTER] if r["reason"] not in PARSED_DEAD_LETTERS]
    settings = pipeline_settings(broker, "twice")
    with WorkerProcess(settings) as worker:
        sent = [produce_file(SAMPLE, broker.bootstrap, settings.input_topic, progress=False)
                for _ in range(2)]
        total = sum(stats.messages for stats in sent)
        # Done when every record is accounted for and its batch committed (the outputs of a
        # batch are acknowledged before its offsets are committed).
        deadline = time.monotonic() + 240
        while sum(committed_offsets(settings).values()) < total:
            assert worker.alive(), worker.log_tail()
            assert time.monotonic() < deadline, (committed_offsets(settings), total,
                                                 worker.log_tail())
            time.sleep(1)
        text = metrics(settings)
        outputs = {name: read_records(settings, name, timeout_s=3.0) for name in OUTPUT_STREAMS}
    got = canonical(outputs)
    for name in OUTPUT_STREAMS:
        if name == DEAD_LETTER:
            assert got[name] == canonical({name: records[name] + invalid})[name]
        else:
            assert got[name] == expected[name], name
    duplicates = metric_total(text, "feedback_stream_events_total", outcome="duplicate")
    assert duplicates == event_count(records, eng)
    assert metric_total(text, "feedback_stream_dead_letters_total", reason="late") == 0
