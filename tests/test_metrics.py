"""PipelineMetrics: counters follow EngineStats by deltas, label sets stay bounded, output lints.

The lint test needs Debian's ``promtool`` (package ``prometheus``) and fails without it rather
than skipping, so a machine missing it cannot pass silently.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from stream.stats import EngineStats
from tests.prom import exercised_metrics
from topologies.metrics import (
    DEAD_LETTER_REASONS,
    EVENT_TIME_LAG_BUCKETS,
    OTHER,
    PROCESSING_LATENCY_BUCKETS,
    PipelineMetrics,
    render,
)

PROMTOOL_MISSING = (
    "promtool not found on PATH: install Debian's Prometheus (`apt-get install -y prometheus`); "
    "CI installs it"
)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(PROMTOOL_MISSING)
    return path


@pytest.fixture
def metrics() -> PipelineMetrics:
    return PipelineMetrics(CollectorRegistry(), top_k=5)


def value(m: PipelineMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def series(m: PipelineMetrics, name: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in m.registry.collect()
        for sample in family.samples
        if sample.name == name
    ]


def test_counters_follow_engine_stats(metrics: PipelineMetrics) -> None:
    stats = EngineStats()
    stats.events[("turn", "ok")] += 5
    stats.events[("unknown", "dead_letter")] += 2
    stats.dead_letters["invalid_json"] += 2
    stats.signals["barge_in"] += 3
    stats.failure_points["asr"] += 1
    stats.evictions["device"] += 4
    metrics.sync_stats(stats)

    assert value(metrics, "feedback_stream_events_total", type="turn", outcome="ok") == 5
    assert value(
        metrics, "feedback_stream_events_total", type="unknown", outcome="dead_letter") == 2
    assert value(metrics, "feedback_stream_dead_letters_total", reason="invalid_json") == 2
    assert value(metrics, "feedback_stream_signals_total", kind="barge_in") == 3
    assert value(metrics, "feedback_stream_defects_total", failure_point="asr") == 1
    assert value(metrics, "feedback_stream_state_evictions_total", kind="device") == 4

    stats.events[("turn", "ok")] += 7
    stats.signals["rephrase"] += 1
    metrics.sync_stats(stats)
    assert value(metrics, "feedback_stream_events_total", type="turn", outcome="ok") == 12
    assert value(metrics, "feedback_stream_signals_total", kind="rephrase") == 1


def test_sync_is_delta_based(metrics: PipelineMetrics) -> None:
    stats = EngineStats()
    stats.events[("turn", "ok")] = 10
    stats.dead_letters["late"] = 3
    for _ in range(3):
        metrics.sync_stats(stats)
    assert value(metrics, "feedback_stream_events_total", type="turn", outcome="ok") == 10
    assert value(metrics, "feedback_stream_dead_letters_total", reason="late") == 3


def test_engine_reset_counts_new_values_and_sources_are_independent(
    metrics: PipelineMetrics,
) -> None:
    old = EngineStats()
    old.signals["defect"] = 10
    metrics.sync_stats(old)
    fresh = EngineStats()  # e.g. the engine was rebuilt after a rebalance
    fresh.signals["defect"] = 4
    metrics.sync_stats(fresh)
    assert value(metrics, "feedback_stream_signals_total", kind="defect") == 14

    other_partition = EngineStats()
    other_partition.signals["defect"] = 1
    metrics.sync_stats(other_partition, source=("interactions", 1))
    metrics.sync_stats(fresh)  # unchanged: no double counting across sources
    assert value(metrics, "feedback_stream_signals_total", kind="defect") == 15


def test_unknown_label_values_collapse(metrics: PipelineMetrics) -> None:
    stats = EngineStats()
    stats.dead_letters["made_up_reason"] = 2
    stats.dead_letters["also_made_up"] = 1
    stats.signals["new_kind"] = 1
    stats.events[("turn", "weird_outcome")] = 1
    for i in range(100):
        stats.failure_points[f"fp{i}"] = 1
    metrics.sync_stats(stats)

    assert value(metrics, "feedback_stream_dead_letters_total", reason=OTHER) == 3
    assert value(metrics, "feedback_stream_signals_total", kind=OTHER) == 1
    assert value(metrics, "feedback_stream_events_total", type="turn", outcome=OTHER) == 1
    defects = series(metrics, "feedback_stream_defects_total")
    assert len(defects) == 33  # 32 distinct values, then "other"
    assert sum(value(metrics, "feedback_stream_defects_total", **s) or 0 for s in defects) == 100


def test_known_series_exist_before_any_event(metrics: PipelineMetrics) -> None:
    for reason in DEAD_LETTER_REASONS:
        assert value(metrics, "feedback_stream_dead_letters_total", reason=reason) == 0
    assert value(metrics, "feedback_stream_signals_total", kind="teachable_moment") == 0
    assert value(metrics, "feedback_stream_producer_retries_total") == 0


def test_top_k_never_exceeds_k_series(metrics: PipelineMetrics) -> None:
    for step in range(200):  # 1,000 distinct utterances, 5 per update, over time
        items = [(f"utterance {step * 5 + i}", 0.9 - i / 10, 100 + i) for i in range(5)]
        metrics.set_top_defects(items + [("beyond k", 0.01, 1)])
        rates = series(metrics, "feedback_stream_top_defect_rate")
        assert len(rates) == 5
        assert {s["rank"] for s in rates} == {"1", "2", "3", "4", "5"}
        assert len(series(metrics, "feedback_stream_top_defect_plays")) == 5
    assert value(
        metrics, "feedback_stream_top_defect_rate", rank="1", utterance="utterance 995") == 0.9
    assert value(
        metrics, "feedback_stream_top_defect_plays", rank="2", utterance="utterance 996") == 101

    metrics.set_top_defects([])
    assert series(metrics, "feedback_stream_top_defect_rate") == []


def test_top_k_truncates_long_utterances(metrics: PipelineMetrics) -> None:
    metrics.set_top_defects([("x" * 10_000, 0.5, 3)])
    (labels,) = series(metrics, "feedback_stream_top_defect_rate")
    assert len(labels["utterance"]) <= 120


def test_processing_latency_is_wall_clock_from_receipt(metrics: PipelineMetrics) -> None:
    name = "feedback_stream_processing_latency_seconds"
    now = 5_000.0  # monotonic clock: no relation to event time at all
    metrics.observe_processing_latency([now - 0.004, now - 0.04, now - 0.04, now - 2.0], now)
    metrics.observe_processing_latency([now + 1.0], now)  # clock skew between threads: 0
    assert value(metrics, name + "_count") == 5
    assert value(metrics, name + "_sum") == pytest.approx(2.084)
    assert value(metrics, name + "_bucket", le="0.005") == 2  # bounds are inclusive (le)
    assert value(metrics, name + "_bucket", le="0.05") == 4
    assert value(metrics, name + "_bucket", le="2.5") == 5
    assert len(series(metrics, name + "_bucket")) == len(PROCESSING_LATENCY_BUCKETS) + 1


def test_event_time_lag_ignores_the_wall_clock(metrics: PipelineMetrics) -> None:
    """A stream recorded in 2024 and replayed today: lags are event-time differences, so they
    land in finite buckets (the old wall-clock-minus-event-time histogram had every
    observation of a recorded stream in +Inf)."""
    name = "feedback_stream_event_time_lag_seconds"
    head = 1_717_200_000_000  # 2024-06-01
    metrics.observe_event_time_lag([head - ts for ts in (head, head - 45_000, head - 105_000,
                                                         head + 3_000)])
    assert value(metrics, name + "_count") == 4
    assert value(metrics, name + "_sum") == pytest.approx(150.0)
    assert value(metrics, name + "_bucket", le="0.1") == 2  # at the head, and ahead of it
    assert value(metrics, name + "_bucket", le="45.0") == 3
    assert value(metrics, name + "_bucket", le="120.0") == 4
    assert len(series(metrics, name + "_bucket")) == len(EVENT_TIME_LAG_BUCKETS) + 1


def test_batch_processing_is_weighted_by_batch_size(metrics: PipelineMetrics) -> None:
    name = "feedback_stream_event_processing_seconds"
    metrics.observe_batch(2_000, 0.02)  # 10 us per event
    metrics.observe_batch(10, 0.01)  # 1 ms per event
    metrics.observe_batch(0, 1.0)  # empty batch: nothing to attribute
    assert value(metrics, name + "_count") == 2_010
    assert value(metrics, name + "_sum") == pytest.approx(0.03)
    assert value(metrics, name + "_bucket", le="1e-05") == 2_000
    assert value(metrics, name + "_bucket", le="0.001") == 2_010


def test_gauges(metrics: PipelineMetrics) -> None:
    metrics.set_lag("interactions", 0, 42)
    metrics.set_lag("interactions", 1, -5)  # stale end offset
    assert value(metrics, "feedback_stream_consumer_lag", topic="interactions", partition="0") == 42
    assert value(metrics, "feedback_stream_consumer_lag", topic="interactions", partition="1") == 0
    metrics.remove_lag("interactions", 1)
    metrics.remove_lag("interactions", 7)  # never set: no error
    assert len(series(metrics, "feedback_stream_consumer_lag")) == 1

    metrics.set_watermark_delay(2.5)
    metrics.set_state_sizes(10, {"utterance": 7, "intent": 3, "bogus": 1}, markov_states=12)
    assert value(metrics, "feedback_stream_watermark_delay_seconds") == 2.5
    assert value(metrics, "feedback_stream_tracked_devices") == 10
    assert value(metrics, "feedback_stream_tracked_keys", key_type="utterance") == 7
    assert value(metrics, "feedback_stream_tracked_keys", key_type=OTHER) == 1
    assert value(metrics, "feedback_stream_markov_states") == 12

    metrics.producer_error("feedback.defects")
    metrics.producer_retry()
    metrics.producer_retry(2)
    assert value(metrics, "feedback_stream_producer_errors_total", topic="feedback.defects") == 1
    assert value(metrics, "feedback_stream_producer_retries_total") == 3


def test_promtool_accepts_rendered_metrics() -> None:
    m = PipelineMetrics()  # default registry: process and GC metrics included
    exercised_metrics(m)
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=render(m.registry), capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b"", (
        result.stdout + result.stderr)


def test_http_server_serves_metrics() -> None:
    m = PipelineMetrics(CollectorRegistry())
    exercised_metrics(m)
    server = m.start_http_server(0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
    finally:
        server.shutdown()
        server.server_close()
    assert b'feedback_stream_events_total{outcome="ok",type="turn"} 3.0' in body
