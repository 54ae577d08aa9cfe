"""Kafka clients for the benchmarks: the bare consumer baseline, a timestamped topic reader,
a readiness probe, and a worker pool on a fresh embedded broker.

Timestamps are the records' Kafka CreateTime (set by the producing client when it appends the
record, ms resolution); the benchmark process and the worker share the host clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from bench.common import Progress, Timing
from stream.records import OUTPUT_STREAMS
from topologies.settings import KafkaSettings

PROBE_DEVICE = "bench-probe"


@dataclasses.dataclass
class TopicLog:
    """What was read from one topic: counts and time span, plus the records asked for."""

    count: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    records: list[tuple[bytes | None, bytes, int]] = dataclasses.field(default_factory=list)


async def _assigned_consumer(bootstrap: str, topics: list[str]) -> Any:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=100)
    await consumer.start()
    await consumer.topics()  # loads metadata for partitions_for_topic
    tps = [TopicPartition(t, p) for t in topics
           for p in sorted(consumer.partitions_for_topic(t) or ())]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer


@dataclasses.dataclass
class BareTiming(Timing):
    from_first_s: float = 0.0
    """Wall time from the first record received to the last (as the do-nothing agents are
    timed); ``wall_s`` includes the first fetch."""


async def _bare_loop(bootstrap: str, topic: str, expected: int) -> BareTiming:
    consumer = await _assigned_consumer(bootstrap, [topic])
    loads, n = orjson.loads, 0
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        first = None
        while n < expected:
            batches = await consumer.getmany(timeout_ms=1000)
            if batches and first is None:
                first = time.perf_counter()
            for messages in batches.values():
                for msg in messages:
                    with contextlib.suppress(orjson.JSONDecodeError):  # bad lines are valid input
                        loads(msg.value)
                n += len(messages)
            if not batches and time.perf_counter() - w0 > 120:
                raise RuntimeError(f"bare loop: only {n} of {expected} records in {topic}")
        end = time.perf_counter()
        return BareTiming(end - w0, time.process_time() - c0, end - (first or w0))
    finally:
        await consumer.stop()


def bare_loop(bootstrap: str, topic: str, expected: int) -> BareTiming:
    """The baseline: one aiokafka consumer, ``getmany`` + ``orjson.loads`` per record, until
    ``expected`` records were read (consumer start-up and metadata not timed)."""
    return asyncio.run(_bare_loop(bootstrap, topic, expected))


async def _read(bootstrap: str, topics: list[str], keep: set[str], idle_s: float,
                done: Callable[[dict[str, TopicLog]], bool], timeout_s: float,
                progress: Progress | None, alive: Callable[[], None] | None,
                give_up_idle_s: float) -> dict[str, TopicLog]:
    consumer = await _assigned_consumer(bootstrap, topics)
    logs = {t: TopicLog() for t in topics}
    deadline, last_new = time.monotonic() + timeout_s, time.monotonic()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for tp, messages in batches.items():
                lg = logs[tp.topic]
                lg.count += len(messages)
                for msg in messages:
                    ts = msg.timestamp
                    if lg.first_ms is None or ts < lg.first_ms:
                        lg.first_ms = ts
                    if lg.last_ms is None or ts > lg.last_ms:
                        lg.last_ms = ts
                if tp.topic in keep:
                    lg.records.extend((m.key, m.value, m.timestamp) for m in messages)
                last_new = now
            if progress is not None:
                progress.update(sum(lg.count for lg in logs.values()))
            if alive is not None:
                alive()
            if (now - last_new >= idle_s and done(logs)) or now - last_new >= give_up_idle_s:
                return logs
            if now > deadline:
                raise TimeoutError(f"outputs incomplete after {timeout_s:.0f} s: "
                                   f"{ {t: lg.count for t, lg in logs.items()} }")
    finally:
        await consumer.stop()


def read_until_idle(bootstrap: str, topics: list[str], *, keep: set[str] = frozenset(),
                    idle_s: float = 5.0, done: Callable[[dict[str, TopicLog]], bool] = bool,
                    timeout_s: float = 600.0, progress: Progress | None = None,
                    alive: Callable[[], None] | None = None,
                    give_up_idle_s: float = float("inf")) -> dict[str, TopicLog]:
    """Read ``topics`` from the beginning until ``done(logs)`` holds and nothing new arrived
    for ``idle_s`` (or nothing at all for ``give_up_idle_s``); records of ``keep`` topics are
    returned as (key, value, timestamp). ``alive()`` is called on every poll (it raises when a
    worker died)."""
    return asyncio.run(_read(bootstrap, topics, set(keep), idle_s, done, timeout_s, progress,
                             alive, give_up_idle_s))


async def _floor(bootstrap: str, topic: str, lines: list[bytes], rate: float) -> list[float]:
    from topologies.kafka_io import produce_file_async

    consumer = await _assigned_consumer(bootstrap, [topic])
    latencies: list[float] = []

    async def consume() -> None:
        idle_since = time.monotonic()
        while len(latencies) < len(lines) and time.monotonic() - idle_since < 5.0:
            batches = await consumer.getmany(timeout_ms=100)
            now_ms = time.time() * 1000.0
            for messages in batches.values():
                latencies.extend(now_ms - m.timestamp for m in messages)
                idle_since = time.monotonic()

    try:
        await asyncio.gather(consume(), produce_file_async(
            lines, bootstrap, topic, rate=rate, progress=False, partitions=4))
    finally:
        await consumer.stop()
    return latencies


def floor_latency(bootstrap: str, topic: str, lines: list[bytes], rate: float) -> list[float]:
    """Latency floor of the transport (ms): paced producer -> broker -> a bare consumer in
    the same process, receive time minus the record's CreateTime. No worker involved."""
    return asyncio.run(_floor(bootstrap, topic, lines, rate))


def cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds a process used so far (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class ConsumerRun:
    """A do-nothing consumer app timed by its markers (``bench.faust_apps``): epoch seconds of
    its start, of its first record and of its last."""

    started: float
    first: float
    last: float

    def rate(self, records: int) -> float:
        """Records per second from the first record to the last (start-up excluded)."""
        return records / max(self.last - self.first, 1e-3)


def time_consumer_app(pipe: Pipeline, app: str, expected: int, timeout_s: float = 600.0,
                      ) -> ConsumerRun:
    """Run ``bench.faust_apps:<app>`` over the pipeline's input topic (its own consumer group,
    from the earliest offset) until it has seen ``expected`` records; then stop it."""
    import subprocess
    import sys

    from bench.faust_apps import DONE_TOPIC_ENV, EXPECTED_ENV
    from topologies.broker import free_port
    from topologies.kafka_io import create_topics
    from topologies.runner import settings_env

    done = f"bench-done-{app}"
    create_topics(pipe.bootstrap, {done: 1})
    state_dir = tempfile.mkdtemp(prefix=f"bench-{app}-")
    settings = dataclasses.replace(pipe.settings, web_port=free_port(), state_dir=state_dir)
    env = {**os.environ, **settings_env(settings), DONE_TOPIC_ENV: done,
           EXPECTED_ENV: str(expected)}
    log_path = os.path.join(state_dir, "worker.log")
    started = time.time()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "faust", "-A", f"bench.faust_apps:{app}",
                                 "worker", "-l", "warn"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)

    def alive() -> None:
        if proc.poll() is not None:
            with open(log_path, errors="replace") as fh:
                raise RuntimeError(f"{app} exited with {proc.returncode}:\n{fh.read()[-3000:]}")

    try:
        logs = read_until_idle(pipe.bootstrap, [done], keep={done}, idle_s=0.0,
                               timeout_s=timeout_s, alive=alive,
                               done=lambda lg: any(k == b"last" for k, _, _ in lg[done].records))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(state_dir, ignore_errors=True)
    marks = {key: ts / 1000.0 for key, _, ts in logs[done].records}
    return ConsumerRun(started, marks[b"first"], marks[b"last"])


def probe_line(n: int, ts: int) -> bytes:
    """A turn the device reports as barged in: the worker emits a barge-in as soon as it
    processes it. ``ts`` precedes the stream, so it finalises nothing of it."""
    return orjson.dumps({"type": "turn", "event_id": f"{PROBE_DEVICE}-{n}",
                         "device_id": PROBE_DEVICE, "ts": ts, "utterance": "bench probe",
                         "tts_end_ts": ts + 3000, "barge_in_ts": ts + 1000})


def wait_until_processing(pipe: Pipeline, ts: int, timeout_s: float = 120.0,
                          ) -> tuple[float, int]:
    """Send probes until the worker answers one; (seconds until it did, probes sent)."""
    from topologies.kafka_io import produce_file

    started, n = time.monotonic(), 0
    topic = pipe.settings.topic("barge-ins")
    while time.monotonic() - started < timeout_s:
        n += 1
        produce_file([probe_line(n, ts)], pipe.bootstrap, pipe.settings.input_topic,
                     progress=False)
        try:
            read_until_idle(pipe.bootstrap, [topic], idle_s=0.0, timeout_s=3.0,
                            done=lambda lg: lg[topic].count > 0, alive=pipe.check_alive)
            return time.monotonic() - started, n
        except TimeoutError:
            continue
    raise TimeoutError(f"the worker processed no probe within {timeout_s:.0f} s")


@contextlib.contextmanager
def pipeline(n_workers: int, app_id: str, partitions: int = 4) -> Iterator[Any]:
    """A fresh embedded broker with the topics created; yields a ``Pipeline``."""
    from topologies.broker import EmbeddedBroker
    from topologies.runner import demo_settings, prepare_topics

    with EmbeddedBroker() as broker:
        settings = demo_settings(broker.bootstrap, app_id=app_id, partitions=partitions)
        prepare_topics(settings)
        pipe = Pipeline(settings, n_workers)
        pipe.broker_pid = broker.pid
        try:
            yield pipe
        finally:
            pipe.stop()


class Pipeline:
    """Worker processes of one consumer group on one broker (each with its own web port and
    state directory)."""

    def __init__(self, settings: KafkaSettings, n_workers: int) -> None:
        self.settings = settings
        self.n_workers = n_workers
        self.workers: list[Any] = []
        self.dirs: list[str] = []
        self.started_at: float | None = None
        self.broker_pid: int | None = None

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap_servers

    def output_topics(self) -> list[str]:
        return [self.settings.topic(name) for name in OUTPUT_STREAMS]

    def start(self) -> float:
        """Start the workers; returns the wall-clock (epoch s) start time."""
        from topologies.broker import free_port
        from topologies.runner import WorkerProcess

        self.started_at = time.time()
        for i in range(self.n_workers):
            state_dir = tempfile.mkdtemp(prefix="bench-worker-")
            self.dirs.append(state_dir)
            settings = dataclasses.replace(self.settings, state_dir=state_dir,
                                           web_port=self.settings.web_port if i == 0
                                           else free_port())
            self.workers.append(WorkerProcess(settings).start())
        return self.started_at

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    def check_alive(self) -> None:
        for w in self.workers:
            if not w.alive():
                raise RuntimeError(f"worker exited with {w.proc.returncode}:\n{w.log_tail()}")

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.workers, self.dirs = [], []
