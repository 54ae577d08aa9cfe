"""The worker on the embedded broker agrees with the in-process replay on streams unlike the
sample: a sparse stream with long idle gaps, and a stream delivered twice."""

from __future__ import annotations

from pathlib import Path

from stream.records import OUTPUT_STREAMS
from stream.settings import Settings
from tests.test_kafka_pipeline import canonical, expected_records, pipeline_settings
from tests.test_processors import idle_gap_lines
from topologies.kafka_io import produce_file
from topologies.runner import WorkerProcess, collect_outputs, expected_counts


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
