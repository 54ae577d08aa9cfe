"""Faust's producer-buffer waits become metrics, not log warnings
(topologies/faust_fixes/producer_backpressure).

The worker-level check (a real worker on the sample logs no ``producer buffer full`` line and
counts its waits) is in tests/test_monitoring_worker.py."""

from __future__ import annotations

import asyncio
import logging

from faust.transport.producer import ProducerBuffer
from prometheus_client import CollectorRegistry

from topologies.faust_fixes import producer_backpressure as backpressure
from topologies.metrics import PipelineMetrics


class FakeBuffer:
    """The attributes of ProducerBuffer that wait_until_ebb uses."""

    max_messages = 100

    def __init__(self, size: int) -> None:
        self.size = size
        self.flushed: list[int] = []

    async def flush_atmost(self, n: int) -> int:
        await asyncio.sleep(0.01)
        self.flushed.append(n)
        drained = self.size - n
        self.size = n
        return drained


def test_waits_are_counted_and_not_logged(caplog) -> None:
    original = ProducerBuffer.wait_until_ebb
    metrics = PipelineMetrics(CollectorRegistry())
    try:
        backpressure.install_backpressure_metrics(metrics.changelog_backpressure)
        assert ProducerBuffer.wait_until_ebb is backpressure._wait_until_ebb
        full, ok = FakeBuffer(250), FakeBuffer(80)
        with caplog.at_level(logging.DEBUG):
            asyncio.run(ProducerBuffer.wait_until_ebb(full))
            asyncio.run(ProducerBuffer.wait_until_ebb(ok))
    finally:
        ProducerBuffer.wait_until_ebb = original
    assert full.flushed == [100] and ok.flushed == []  # Faust's wait, unchanged
    get = metrics.registry.get_sample_value
    assert get("feedback_stream_changelog_backpressure_waits_total") == 1
    assert get("feedback_stream_changelog_backpressure_seconds_total") >= 0.01
    assert "buffer full" not in caplog.text and "flush took" not in caplog.text
