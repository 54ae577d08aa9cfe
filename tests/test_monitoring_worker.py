"""A real Prometheus server scrapes a running worker (real broker) and sees sane series."""

from __future__ import annotations

import pytest

from tests.prom import prometheus_scraping, query
from tests.test_kafka_pipeline import SAMPLE, pipeline_settings
from topologies.kafka_io import produce_file
from topologies.runner import WorkerProcess, collect_outputs, expected_counts


def value(base: str, expr: str) -> float:
    result = query(base, expr)["data"]["result"]
    assert result, f"no data for {expr}"
    return float(result[0]["value"][1])


@pytest.mark.kafka
def test_prometheus_scrapes_running_worker(broker, tmp_path, record_property):
    settings = pipeline_settings(broker, "prom")
    expected = expected_counts(SAMPLE, settings)
    with WorkerProcess(settings) as worker:
        produce_file(SAMPLE, broker.bootstrap, settings.input_topic, progress=False)
        outputs = collect_outputs(settings, expected, timeout_s=120, worker=worker)
        with prometheus_scraping(f"127.0.0.1:{settings.web_port}", tmp_path,
                                 scrapes=12) as base:  # >= 5 s: one gauge refresh
            assert value(base, 'up{job!=""}') == 1
            assert value(base, 'sum(feedback_stream_events_total{outcome="ok"})') > 4_000
            assert value(base, "sum(feedback_stream_dead_letters_total)") == \
                len(outputs["dead-letter"])
            assert value(base, 'feedback_stream_signals_total{kind="defect"}') == \
                len(outputs["defects"])
            assert value(base, 'feedback_stream_signals_total{kind="barge_in"}') == \
                len(outputs["barge-ins"])
            assert value(base, "feedback_stream_event_processing_seconds_count") > 4_000
            # The sample was recorded in 2024: latencies must not depend on the wall clock.
            # One observation per stage-1 signal record with a ts (rephrase records have none).
            signals = sum(len(outputs[s]) for s in ("barge-ins", "defects", "teachable-moments"))
            lag = "feedback_stream_event_time_lag_seconds"
            assert value(base, f"{lag}_count") >= signals
            assert value(base, f'{lag}_bucket{{le="3600.0"}}') == value(base, f"{lag}_count")
            p50 = value(base, f"histogram_quantile(0.5, {lag}_bucket)")
            assert 0 <= p50 <= 120, p50  # finalisation: rephrase window + allowed lateness
            latency = "feedback_stream_processing_latency_seconds"
            assert value(base, f"{latency}_count") >= 4_000  # one per input record
            assert value(base, f'{latency}_bucket{{le="60.0"}}') == \
                value(base, f"{latency}_count")
            p99 = value(base, f"histogram_quantile(0.99, {latency}_bucket)")
            assert 0 < p99 < 30, p99
            record_property("event_time_lag_p50_s", p50)
            record_property("processing_latency_p99_s", p99)
            top = query(base, "feedback_stream_top_defect_rate")["data"]["result"]
            assert 0 < len(top) <= settings.top_k
            assert all(0.0 <= float(s["value"][1]) <= 1.0 for s in top)
            assert value(base, "feedback_stream_tracked_devices") > 0
            assert value(base, 'feedback_stream_tracked_keys{key_type="utterance"}') > 100
            lag = query(base, "feedback_stream_consumer_lag")["data"]["result"]
            assert lag and all(float(s["value"][1]) == 0 for s in lag), lag
            # Faust's producer-buffer waits: counted, not logged (producer_backpressure).
            assert value(base, "feedback_stream_changelog_backpressure_waits_total") >= 0
        assert worker.alive()
        assert "producer buffer full" not in worker.log_path.read_text(errors="replace")
