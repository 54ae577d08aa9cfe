"""Prometheus export of the pipeline's health: ``PipelineMetrics`` and ``render``.

The pure engine keeps plain ``collections.Counter`` objects (``stream.stats.EngineStats``); this
module is the only place that knows about Prometheus. Every metric is prefixed
``feedback_stream_`` and every label has a bounded value set, so the number of series is fixed
no matter what the input stream contains:

* closed label sets (outcome, dead-letter reason, signal kind, key type) map unknown values to
  ``"other"``;
* open label sets (event type, failure point, eviction kind, topic) accept the first
  ``max_label_values`` distinct values and map later ones to ``"other"``;
* the top-K table (the only label carrying free text) is replaced wholesale on each update, so
  at most ``top_k`` series exist at any time.

Dead letters are exported twice on purpose, without inventing data: the engine counts
``events[(type, outcome)]`` and ``dead_letters[reason]`` separately (a dead letter's type is
usually unknown because it failed to parse), so ``events_total{type, outcome}`` and
``dead_letters_total{reason}`` mirror those two counters instead of a joint
``{type, outcome, reason}`` that the engine never observed.

>>> m = PipelineMetrics()
>>> m.set_top_defects([("play jazz", 0.4, 120)])
>>> m.registry.get_sample_value(
...     "feedback_stream_top_defect_rate", {"rank": "1", "utterance": "play jazz"})
0.4
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client import start_http_server as _prom_start_http_server

from stream.records import KEY_TYPES
from stream.schema import REASONS
from stream.stats import EngineStats
from topologies.metric_types import (
    OTHER,
    PREFIX,
    BoundedLabel,
    _TopDefectsCollector,
    _WeightedHistogram,
)

OUTCOMES: tuple[str, ...] = ("ok", "dead_letter", "duplicate")
# The engine's dead-letter reason codes (one list, in the schema); others export as "other".
DEAD_LETTER_REASONS: tuple[str, ...] = REASONS
SIGNAL_KINDS: tuple[str, ...] = (
    "barge_in", "rephrase", "defect", "teachable_moment", "rewrite_trigger", "drift_alert",
)

# Processing latency (wall clock, input record received -> its batch's outputs acknowledged
# by Kafka): the batch window (50 ms) plus processing plus the produce round trip on the hot
# path; seconds when a worker falls behind.
PROCESSING_LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
# Event-time lag of a signal record (event time, not wall clock, so recorded streams give the
# same numbers as live ones): barge-ins reported by the device go out at once, rephrases and
# defects wait for the rephrase window (45 s) and finalisation (allowed lateness 60 s),
# feedback-driven moments up to the teach window (2 min); idle devices up to the idle timeout.
EVENT_TIME_LAG_BUCKETS: tuple[float, ...] = (
    0.1, 1.0, 5.0, 15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1800.0, 3600.0,
)
# Per-event processing cost is microseconds; the upper buckets catch pathological batches.
PROCESSING_BUCKETS: tuple[float, ...] = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 0.1,
)


class PipelineMetrics:
    """All Prometheus metrics of one worker process.

    With ``registry=None`` a private registry is created that also carries the process, platform
    and GC collectors (what a worker wants on ``/metrics``); a registry passed in gets only the
    pipeline's metrics, which keeps tests independent of each other.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        top_k: int = 20,
        max_label_values: int = 32,
    ) -> None:
        if registry is None:
            registry = CollectorRegistry()
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
        self.registry = registry
        self.top_k = top_k

        self._outcome = BoundedLabel(OUTCOMES)
        self._reason = BoundedLabel(DEAD_LETTER_REASONS)
        self._kind = BoundedLabel(SIGNAL_KINDS)
        self._key_type = BoundedLabel(KEY_TYPES)
        self._event_type = BoundedLabel(cap=max_label_values)
        self._failure_point = BoundedLabel(cap=max_label_values)
        self._eviction_kind = BoundedLabel(cap=max_label_values)
        self._topic = BoundedLabel(cap=max_label_values)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=registry)

        self.events = counter(
            "events_total", "Input events by event type and outcome (ok, dead_letter, duplicate)."
            " Dead letters usually have type 'unknown'; reasons are in dead_letters_total.",
            "type", "outcome")
        self.dead_letters = counter(
            "dead_letters_total", "Events sent to the dead-letter stream, by reason.", "reason")
        self.signals = counter("signals_total", "Feedback signals emitted, by kind.", "kind")
        self.defects = counter(
            "defects_total", "Defective turns detected, by failure point.", "failure_point")
        self.evictions = counter(
            "state_evictions_total", "State entries evicted (idle devices, least recently "
            "updated estimators), by kind.", "kind")
        self.producer_errors = counter(
            "producer_errors_total", "Output records that could not be produced, after every "
            "retry (the worker stops; the batch is processed again after a restart).", "topic")
        self.producer_retries = counter(
            "producer_retries_total", "Produce attempts retried after a transient error.")
        self.backpressure_waits = counter(
            "changelog_backpressure_waits_total", "Times event delivery waited for Faust's "
            "producer buffer (changelog writes) to drain below its limit.")
        self.backpressure_seconds = counter(
            "changelog_backpressure_seconds_total", "Seconds event delivery waited for "
            "changelog writes to drain.")
        self.stranded_rewinds = counter(
            "stranded_partition_rewinds_total", "Input partitions sought back because records "
            "consumed from the broker were never handed to the streams (faust_fixes.fetch_holes).")
        self.consumer_lag = gauge(
            "consumer_lag", "Messages not yet consumed: partition end offset minus position.",
            "topic", "partition")
        self.watermark_delay = gauge(
            "watermark_delay_seconds", "Wall-clock time minus the event-time watermark: the "
            "freshness of a live stream (for a recorded stream, the recording's age).")
        self.tracked_devices = gauge("tracked_devices", "Devices with live session state.")
        self.tracked_keys = gauge(
            "tracked_keys", "Defect-rate estimators held, by key type.", "key_type")
        self.markov_states = gauge("markov_states", "States in the dialogue Markov model.")
        self.processing_latency = _WeightedHistogram(
            PREFIX + "processing_latency_seconds", "Wall-clock time from the worker receiving "
            "an input record to its batch's outputs being acknowledged by Kafka, per input "
            "record.", PROCESSING_LATENCY_BUCKETS)
        self.event_time_lag = _WeightedHistogram(
            PREFIX + "event_time_lag_seconds", "Event time the stream had reached when a "
            "signal record was emitted minus the event time of the event behind it: how long "
            "(in event time) a signal waits for its windows.", EVENT_TIME_LAG_BUCKETS)
        self.processing = _WeightedHistogram(
            PREFIX + "event_processing_seconds", "Processing time per event: each batch's "
            "duration divided by its size, counted once per event.", PROCESSING_BUCKETS)
        self._top = _TopDefectsCollector(top_k)
        for collector in (self.processing_latency, self.event_time_lag, self.processing,
                          self._top):
            registry.register(collector)  # type: ignore[arg-type]

        # Series of closed label sets exist from the start, so rate() and "no dead letters"
        # panels show 0 instead of "no data".
        for reason in (*DEAD_LETTER_REASONS, OTHER):
            self.dead_letters.labels(reason)
        for kind in SIGNAL_KINDS:
            self.signals.labels(kind)

        self._last_seen: dict[Hashable, dict[str, dict[Any, int]]] = {}
        self._sync_lock = threading.Lock()

    # --- engine counters -------------------------------------------------------------------

    def sync_stats(self, stats: EngineStats, source: Hashable = None) -> None:
        """Add what the engine counted since the previous call to the Prometheus counters.

        Cheap (proportional to the number of distinct keys, not events): call it once per
        batch. ``stats`` is cumulative; a key whose value went down means the engine's counters
        were reset, and its whole new value is counted, as Prometheus does for counter resets.
        Each ``source`` (e.g. one engine per partition) is tracked separately; call
        ``forget_source`` when that engine goes away.
        """
        targets: tuple[tuple[str, Mapping[Any, int], Callable[[Any, int], None]], ...] = (
            ("events", stats.events, self._inc_event),
            ("dead_letters", stats.dead_letters, self._inc_by(self.dead_letters, self._reason)),
            ("signals", stats.signals, self._inc_by(self.signals, self._kind)),
            ("failure_points", stats.failure_points,
             self._inc_by(self.defects, self._failure_point)),
            ("evictions", stats.evictions, self._inc_by(self.evictions, self._eviction_kind)),
        )
        with self._sync_lock:
            last_by_field = self._last_seen.setdefault(source, {})
            for field, current, inc in targets:
                last = last_by_field.get(field, {})
                for key, value in current.items():
                    previous = last.get(key, 0)
                    delta = value - previous if value >= previous else value
                    if delta > 0:
                        inc(key, delta)
                # A copy, not a reference: the engine keeps mutating its Counter.
                last_by_field[field] = dict(current)

    def forget_source(self, source: Hashable) -> None:
        """Drop the remembered values of a ``sync_stats`` source (e.g. a revoked partition)."""
        with self._sync_lock:
            self._last_seen.pop(source, None)

    @staticmethod
    def _inc_by(metric: Counter, label: BoundedLabel) -> Callable[[Any, int], None]:
        return lambda key, delta: metric.labels(label(key)).inc(delta)

    def _inc_event(self, key: tuple[str, str], delta: int) -> None:
        event_type, outcome = key
        self.events.labels(self._event_type(event_type), self._outcome(outcome)).inc(delta)

    # --- timings ---------------------------------------------------------------------------

    def observe_batch(self, n_events: int, seconds: float) -> None:
        """Record a processed batch as ``n_events`` observations of ``seconds / n_events``.

        Per-event timing would cost more than the work it measures; the batch mean weighted by
        batch size keeps ``_count`` equal to events processed and ``_sum`` equal to time spent,
        so rate(_sum)/rate(_count) is the exact mean. Quantiles describe batch means, which
        hide variance between events of one batch.
        """
        if n_events <= 0:
            return
        self.processing.observe(max(seconds, 0.0) / n_events, weight=n_events)

    def observe_processing_latency(self, received_s: Iterable[float], now_s: float) -> None:
        """Record, per input record received at ``received_s`` (monotonic clock, seconds),
        the time until ``now_s`` when its batch's outputs were acknowledged."""
        self.processing_latency.observe_many(max(now_s - t, 0.0) for t in received_s)

    def observe_event_time_lag(self, lags_ms: Iterable[int]) -> None:
        """Record, per signal record, the event time the stream had reached at emit minus the
        event time of the event behind the record (ms). Clamped at 0: an event ahead of the
        head (a device clock ahead of the others) has not waited at all."""
        self.event_time_lag.observe_many(max(lag, 0) / 1000.0 for lag in lags_ms)

    # --- gauges ----------------------------------------------------------------------------

    def set_lag(self, topic: str, partition: int | str, lag: int) -> None:
        """Set the consumer lag (end offset - position) of one assigned partition.

        Meaningful only against a real Kafka broker: the embedded tansu broker reports wrong
        end offsets, so lag is noise there. Negative values (a stale end offset) are clamped.
        """
        self.consumer_lag.labels(self._topic(topic), str(partition)).set(max(lag, 0))

    def remove_lag(self, topic: str, partition: int | str) -> None:
        """Drop the lag series of a partition this worker no longer owns (after a rebalance)."""
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(self._topic(topic), str(partition))

    def set_watermark_delay(self, seconds: float) -> None:
        self.watermark_delay.set(seconds)

    def set_state_sizes(self, devices: int, keys: Mapping[str, int], markov_states: int) -> None:
        """Set the state-size gauges; ``keys`` maps key type (utterance, intent, ...) to count."""
        self.tracked_devices.set(devices)
        totals: dict[str, int] = {}
        for key_type, count in keys.items():
            label = self._key_type(key_type)
            totals[label] = totals.get(label, 0) + count
        for label, count in totals.items():
            self.tracked_keys.labels(label).set(count)
        self.markov_states.set(markov_states)

    def set_top_defects(self, items: Sequence[tuple[str, float, int]]) -> None:
        """Replace the top-K table with ``items`` = (utterance, rate, plays), best rank first.

        Items past ``top_k`` are ignored; previous utterances no longer in the list disappear
        from the next scrape.
        """
        self._top.update(items)

    # --- producer --------------------------------------------------------------------------

    def producer_error(self, topic: str) -> None:
        self.producer_errors.labels(self._topic(topic)).inc()

    def producer_retry(self, n: int = 1) -> None:
        self.producer_retries.inc(n)

    def changelog_backpressure(self, buffered: int, seconds: float) -> None:
        """One wait for the changelog producer buffer (``buffered`` records were pending)."""
        self.backpressure_waits.inc()
        self.backpressure_seconds.inc(max(seconds, 0.0))

    # --- exposition ------------------------------------------------------------------------

    def render(self) -> bytes:
        return render(self.registry)

    def start_http_server(self, port: int, addr: str = "127.0.0.1") -> WSGIServer:
        """Serve this registry on ``/metrics`` (see the module-level ``start_http_server``)."""
        return start_http_server(port, addr, self.registry)


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format; serve it as ``CONTENT_TYPE_LATEST``."""
    return generate_latest(registry)


def start_http_server(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> WSGIServer:
    """Serve ``/metrics`` from a daemon thread; ``.shutdown()`` the returned server to stop.

    ``port=0`` picks a free port: read it from ``server.server_port``.
    """
    server, _thread = _prom_start_http_server(port, addr, registry=registry)
    return server
