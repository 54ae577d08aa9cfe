"""The Faust app: ``faust -A topologies.app worker`` (or ``feedback-stream worker``).

Topology (all names configurable, see ``topologies.settings``):

    interactions (key device_id) --[detect: stage 1, per device]--> barge-ins, rephrases,
        defects, teachable-moments, dead-letter, and rate-updates (key key_type:key)
    rate-updates --[estimate: stage 2, per estimate key]--> defect-rates (compacted)

State: table ``device-state`` (device_id -> session JSON) and table ``defect-rates``
(key_type:key -> counts), both changelog-backed and co-partitioned with their input topics
through Kafka's default key partitioner (``use_partitioner=True``), written once per changed key
per batch; each chunk's table writes are sent together and acknowledged before the agent takes
the next chunk (``faust_fixes.changelog_batches``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST

from stream.records import CHAINS, KEY_TYPES, RATE_UPDATES
from stream.stats import EngineStats
from stream.text import normalize
from topologies import faust_fixes
from topologies.diagnostics import install_task_dump
from topologies.faust_config import faust_config
from topologies.kafka_io import KafkaIOError, check_reachable, check_tls, security_options
from topologies.metrics import PipelineMetrics
from topologies.processors import (
    DeviceProcessor,
    GlobalRewriteProcessor,
    PersonalRewrites,
    RateProcessor,
    RawKeyTable,
)
from topologies.publisher import OutputPublisher
from topologies.settings import KafkaSettings
from topologies.types import BatchProcessor, Message

log = logging.getLogger(__name__)
settings = KafkaSettings.from_env()
faust_fixes.install_recovery_seek_fix()
faust_fixes.install_recovery_highwaters()  # changelogs in normal batches (tansu "latest")
faust_fixes.install_fetch_max_wait(settings.fetch_max_wait_ms)
faust_fixes.install_fetch_hole_rewind()
faust_fixes.install_full_producer_flush()  # table writes sent before offsets are committed
faust_fixes.install_chunk_transport()


app = faust.App(settings.app_id, **faust_config(settings))
faust_fixes.install_offset_guard(app, settings.input_topic)  # sees the first assignment


@app.on_worker_init.connect
def _check_broker(sender: Any, **kwargs: Any) -> None:
    # Before any client starts: Faust would retry, then die with a traceback that hides why.
    if not settings.bootstrap_servers:
        raise SystemExit("feedback-stream worker: error: FEEDBACK_STREAM_BOOTSTRAP_SERVERS is "
                         "not set (HOST:PORT of a Kafka); `feedback-stream worker` starts an "
                         "embedded broker when it is empty")
    try:
        check_reachable(settings.bootstrap_servers)
        check_tls(settings.bootstrap_servers, **security_options(settings))
    except KafkaIOError as exc:
        raise SystemExit(f"feedback-stream worker: error: {exc}") from None


def _raw_topic(name: str, partitions: int = settings.partitions) -> faust.TopicT:
    topic = app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw", partitions=partitions)
    # A backlog waits in the broker, to be fetched as one big chunk, not in the agent's
    # queue as many small ones (docs/operations.md, "The chunk transport").
    faust_fixes.queue_one_chunk(topic)
    return topic


def _table(name: str, partitions: int = settings.partitions,
           ) -> tuple[RawKeyTable, faust_fixes.ChangelogBatch]:
    # Raw bytes keys and values: the changelog key is the input record's key, so the default
    # partitioner co-partitions table and input (a str key type would JSON-encode keys).
    table = app.Table(name, default=None, partitions=partitions, use_partitioner=True,
                      key_type=bytes, value_type=bytes)
    # Its changelog records wait for the agent's send, not in Faust's producer buffer.
    return RawKeyTable(table), faust_fixes.batch_changelog(table)


interactions = _raw_topic(settings.input_topic)
rate_updates = _raw_topic(settings.topic(RATE_UPDATES))
chains = _raw_topic(settings.topic(CHAINS), partitions=1)  # global layer: one place
# Each agent gets whole fetched partition chunks, not one event per record (Faust's per-record
# path costs ~80 us each; docs/operations.md, "The chunk transport").
faust_fixes.chunk_topics(app, [settings.input_topic, settings.topic(RATE_UPDATES),
                               settings.topic(CHAINS)], settings.batch_size)

stats = EngineStats()
personal_table, personal_writes = _table("personal-rewrites")
device_table, device_writes = _table("device-state")
rate_table, rate_writes = _table("defect-rates")
global_table, global_writes = _table("global-rewrites", 1)
personal = PersonalRewrites(settings, personal_table, stats)
devices = DeviceProcessor(settings, device_table, stats, chains=personal)
rates = RateProcessor(settings, rate_table, stats)
global_rewrites = GlobalRewriteProcessor(settings, global_table, stats)


def _messages(chunk: faust_fixes.ChunkMessage) -> list[Message]:
    return [Message(r.key, r.value, r.partition, r.offset, r.topic) for r in chunk.records]


metrics = PipelineMetrics(top_k=settings.top_k)
faust_fixes.install_backpressure_metrics(metrics.changelog_backpressure)
publisher = OutputPublisher(settings, settings.topic, on_error=metrics.producer_error,
                            on_retry=metrics.producer_retry)


_in_flight: dict[int, asyncio.Lock] = {}
"""Per processor, held from a batch's processing to its state writes: a rebalance waits for
them before the processors drop their in-memory state (the batch's changes until commit)."""


def observe_latencies(processor: BatchProcessor, chunk: faust_fixes.ChunkMessage) -> None:
    """Processing latency per input record (received -> outputs acknowledged, wall clock) and,
    for stage 1, event-time lag per signal record (see ``topologies.metrics``)."""
    now = time.monotonic()
    # Faust's Monitor stamps each message (here: the chunk) with time.monotonic() when the
    # consumer receives it; every record of the chunk arrived in the same fetch.
    received = chunk.time_in if chunk.time_in is not None else now
    metrics.observe_processing_latency((received for _ in chunk.records), now)
    if processor is devices:
        metrics.observe_event_time_lag(devices.event_time_lags_ms)


async def _run(stream: faust.StreamT, processor: BatchProcessor,
               writes: list[faust_fixes.ChangelogBatch]) -> None:
    """``writes``: the changelogs of the tables ``processor`` writes, in the order they must
    land (stage 1: the personal miners before the device sessions)."""
    try:
        async for chunk in faust_fixes.chunks(stream):
            started = time.perf_counter()
            async with _in_flight.setdefault(id(processor), asyncio.Lock()):
                outputs = processor.process(_messages(chunk))
                await publisher.publish(outputs)
                # State after outputs, acknowledged before the chunk counts as done (its
                # offsets committable), so state, outputs and offsets never disagree in a way
                # that loses records (see docs/operations.md, "Guarantees in detail").
                processor.commit()
                await faust_fixes.send_in_turn(writes)
            metrics.observe_batch(len(chunk.records), time.perf_counter() - started)
            observe_latencies(processor, chunk)
            metrics.sync_stats(stats)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # Faust would keep the worker running with a dead agent: input piles up unprocessed
        # and nobody notices. Crash the whole worker instead (non-zero exit) so a supervisor
        # restarts it; the failed batch was not acknowledged and will be processed again.
        log.exception("agent failed; stopping the worker")
        await app.crash(exc)
        raise


@app.agent(interactions)
async def detect(stream: faust.StreamT) -> None:
    await _run(stream, devices, [personal_writes, device_writes])


@app.agent(rate_updates)
async def estimate(stream: faust.StreamT) -> None:
    await _run(stream, rates, [rate_writes])


@app.agent(chains)
async def mine(stream: faust.StreamT) -> None:
    await _run(stream, global_rewrites, [global_writes])


@app.task
async def _after_startup() -> None:
    # A task, not app.on_startup_finished: Faust's Worker takes that slot for itself.
    await faust_fixes.stop_debug_logging_after_startup()
    # kill -USR1 <pid>: where every task waits (docs/operations.md)
    install_task_dump(None, _consumer_flow_state, _stream_queues)
    gc.freeze()  # Faust's, aiokafka's and our start-up objects out of every full collection


def _consumer_flow_state() -> str:
    """consumer partitions"""
    return faust_fixes.flow_state(app.consumer)


def _stream_queues() -> str:
    """stream buffers"""
    return faust_fixes.stream_queues(app)


@app.on_before_shutdown.connect
async def _on_shutdown(sender: Any, **kwargs: Any) -> None:
    await publisher.stop()


@app.on_partitions_assigned.connect
async def _on_assigned(sender: Any, assigned: set, **kwargs: Any) -> None:
    mine = sorted(tp.partition for tp in assigned if tp.topic == settings.input_topic)
    log.info("assigned input partitions: %s", mine)


@app.on_partitions_revoked.connect
async def _on_revoked(sender: Any, revoked: set, **kwargs: Any) -> None:
    # Another worker may own these partitions now: drop in-memory state, the tables hold it
    # (after the batch in flight has written its changes there).
    locks = list(_in_flight.values())
    for lock in locks:
        await lock.acquire()
    try:
        for processor in (devices, rates, global_rewrites):
            processor.reset()  # stage 1 resets its personal rewrite layer too
    finally:
        for lock in locks:
            lock.release()


@app.timer(interval=5.0)
async def refresh_gauges() -> None:
    """Gauges that need a look over the state: sizes, top-K, lag, watermark delay."""
    markov = global_rewrites.state_sizes()["states"] + personal.state_sizes()["states"]
    metrics.set_state_sizes(devices.state_sizes()["devices"], rates.state_sizes(), markov)
    metrics.set_top_defects([(key, t.get(), t.plays)
                             for key, t in rates.stage.top_defective(settings.top_k)])
    watermark = devices.watermark()
    if watermark:
        metrics.set_watermark_delay(time.time() - watermark / 1000.0)
    consumer = app.consumer
    lags: dict[str, int] = {}
    for tp in consumer.assignment():
        read = faust_fixes.read_offset(consumer, tp)
        highwater = consumer.highwater(tp)  # from fetch responses: right even on tansu
        if read is not None and highwater is not None:
            lag = max(highwater - read - 1, 0)
            metrics.set_lag(tp.topic, tp.partition, lag)
            lags[tp.topic] = lags.get(tp.topic, 0) + lag
    rewound = await faust_fixes.rewind_stranded(consumer)
    if rewound:
        metrics.stranded_rewinds.inc(len(rewound))
    _log_progress(lags)


_progress: dict[str, Any] = {"at": 0.0, "line": ""}


def _log_progress(lags: dict[str, int]) -> None:
    """One INFO line every ``progress_log_s`` when something moved: what was consumed and
    what is still waiting, so a worker's log shows whether it is busy, stuck or idle."""
    now = time.monotonic()
    if now - _progress["at"] < settings.progress_log_s:
        return
    events = stats.events
    outcomes = {o: sum(n for (_, outcome), n in events.items() if outcome == o)
                for o in ("ok", "duplicate", "dead_letter")}
    line = (f"progress: input events {outcomes['ok']} ok, {outcomes['duplicate']} "
            f"duplicate, {outcomes['dead_letter']} dead-lettered; lag "
            + (", ".join(f"{topic} {lag}" for topic, lag in sorted(lags.items())) or "unknown"))
    if line != _progress["line"]:
        log.info("%s", line)
        _progress["line"] = line
    _progress["at"] = now


@app.page("/metrics")
async def metrics_view(web: Any, request: Any) -> Any:
    # aiohttp refuses a charset inside content_type=, so the header is set directly.
    return web.bytes(metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@app.page("/defect-rates")
async def defect_rate_view(web: Any, request: Any) -> Any:
    key_type = request.query.get("key_type", "utterance")
    key = request.query.get("key") or request.query.get("utterance")
    if not key:
        return web.json({"error": "query parameter 'utterance' (or key_type + key) required"},
                        status=400)
    if key_type not in KEY_TYPES:
        return web.json({"error": f"unknown key_type {key_type!r}; one of "
                                  f"{', '.join(KEY_TYPES)}"}, status=400)
    if key_type == "utterance":
        key = normalize(key)
    record = rates.lookup(key_type, key)
    if record is None:
        return web.json({"error": f"no estimate for {key_type} {key!r}"}, status=404)
    return web.json(record)


@app.page("/rewrites")
async def rewrite_view(web: Any, request: Any) -> Any:
    """The rewrite to apply: the device's personal one if published, else the global one."""
    utterance = request.query.get("utterance")
    device_id = request.query.get("device_id")
    if not utterance:
        return web.json({"error": "query parameter 'utterance' required"}, status=400)
    record = personal.lookup(utterance, device_id) if device_id else None
    if record is None:
        record = global_rewrites.lookup(utterance)
    if record is None:
        return web.json({"error": f"no rewrite for {utterance!r}"}, status=404)
    return web.json(record)
