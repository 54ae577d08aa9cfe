"""Worker faults on the real (embedded tansu) broker, on the session broker: a worker killed
mid-stream (SIGKILL), workers joining and leaving mid-stream (rebalances). What each test found
is in its docstring. Broker and delivery faults: ``tests/test_faults_delivery.py``.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from stream.engine import FeedbackEngine
from stream.records import DEFECT_RATES, OUTPUT_STREAMS
from tests.prom import metric_total
from tests.test_kafka_pipeline import canonical, check_tables_copartitioned
from tests.waits import last_assignment, wait_until
from topologies.broker import free_port
from topologies.kafka_io import produce_file
from topologies.runner import (
    PipelineError,
    WorkerProcess,
    collect_outputs,
    counts_to_collect,
    demo_settings,
    plays_counted,
    prepare_topics,
    read_records,
)
from topologies.settings import KafkaSettings

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample.jsonl"


def pipeline_settings(bootstrap: str, label: str, **overrides: Any) -> KafkaSettings:
    uid = f"{label}-{uuid.uuid4().hex[:6]}"
    settings = demo_settings(bootstrap, app_id=f"fs-{uid}", input_topic=f"interactions-{uid}",
                             topic_prefix=f"{uid}.", **overrides)
    prepare_topics(settings)
    return settings


def replay(lines: list[bytes], settings: KafkaSettings | None = None,
           engine: FeedbackEngine | None = None) -> dict[str, list[dict]]:
    """What the in-process engine (``engine``, else a new one) makes of ``lines`` (every
    line, as the producer sends it)."""
    engine = engine or FeedbackEngine(settings)
    out: dict[str, list[dict]] = {name: [] for name in OUTPUT_STREAMS}
    for number, line in enumerate(lines, 1):
        for o in engine.process(line, {"line": number}):
            out[o.stream].append(o.record)
    for o in engine.flush():
        out[o.stream].append(o.record)
    return out


def missing_records(settings: KafkaSettings, expected: dict[str, list[dict]]) -> str:
    """Which expected records the output topics lack (a failure's first clue: whose device,
    which input offsets), read once more after ``collect_outputs`` gave up and compared the
    way the tests compare them (``canonical``: without transport-specific fields)."""
    lines = []
    for name, records in expected.items():
        if not records:
            continue
        got = canonical({name: read_records(settings, name, timeout_s=3.0)})[name]
        want = canonical({name: records})[name]
        missing = want - got
        if missing:
            lines.append(f"{name}: {missing.total()} of {want.total()} expected records "
                         f"missing, e.g. " + "; ".join(r.decode()[:300] for r in
                                                       list(missing)[:4]))
    return "\n".join(lines) or "no expected record is missing"


def collect_or_name_missing(settings: KafkaSettings, expected: dict[str, list[dict]],
                            timeout_s: float, worker: WorkerProcess) -> dict[str, list[dict]]:
    """``collect_outputs`` for the replay's ``expected`` records; when it gives up, the error
    names the missing records (a count alone does not say which event or partition lost them)."""
    expected_n = counts_to_collect(expected)
    try:
        return collect_outputs(settings, expected_n, timeout_s=timeout_s, worker=worker)
    except PipelineError as exc:
        raise PipelineError(f"{missing_records(settings, expected)}\n{exc}") from None


def metrics(settings: KafkaSettings) -> str:
    url = f"http://127.0.0.1:{settings.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def consumed(settings: KafkaSettings) -> float | None:
    """Input records the worker accounted for (ok + duplicate + dead letter), or None."""
    try:
        return metric_total(metrics(settings), "feedback_stream_events_total")
    except OSError:
        return None


def plays_so_far(settings: KafkaSettings) -> int:
    """Updates counted by the defect-rate estimates published so far."""
    return plays_counted(read_records(settings, DEFECT_RATES, timeout_s=0.3, max_s=1.0))


def check_final_rates(got: list[dict], expected: list[dict]) -> None:
    """The last defect-rate record per key against the replay's, with a readable diff."""
    final = {(r["key_type"], r["key"]): (r["plays"], r["defects"]) for r in got}
    want = {(r["key_type"], r["key"]): (r["plays"], r["defects"]) for r in expected}
    lost = {k: (final[k], v) for k, v in want.items() if k in final and final[k][0] < v[0]}
    double = {k: (final[k], v) for k, v in want.items() if k in final and final[k][0] > v[0]}
    other = {k: (final.get(k), v) for k, v in want.items()
             if final.get(k) != v and k not in lost and k not in double}
    other.update({k: (v, None) for k, v in final.items() if k not in want})
    assert not (lost or double or other), (
        f"final (plays, defects) per key differ from the replay: {len(lost)} keys with fewer "
        f"plays (lost), {len(double)} with more (double-counted), {len(other)} other; e.g. "
        f"got/expected {dict(list({**lost, **double, **other}.items())[:4])}")


class GatedProducer:
    """Produces ``lines`` in parts (cut at the fractions ``cuts``) at ``rate`` events/s; each
    part after the first waits for :meth:`release`. The faults thus land mid-stream however
    slow the machine is (a producer racing the worker at a fixed rate finished first under
    load)."""

    def __init__(self, lines: list[bytes], bootstrap: str, topic: str, rate: float,
                 cuts: tuple[float, ...] = (0.6,)) -> None:
        bounds = [0, *(int(len(lines) * c) for c in cuts), len(lines)]
        self.parts = [lines[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.gates = [threading.Event() for _ in cuts]
        self.lines = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for i, part in enumerate(self.parts):
                if i and not self.gates[i - 1].wait(600):
                    raise TimeoutError("the test never released the rest of the stream")
                self.lines += produce_file(part, self.bootstrap, self.topic, rate=self.rate,
                                           progress=False).lines
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def start(self) -> GatedProducer:
        self.thread.start()
        return self

    @property
    def held_back(self) -> bool:
        """Part of the stream is still waiting for a release."""
        return not self.gates[-1].is_set()

    def release(self) -> None:
        """Let the next part go."""
        next(g for g in self.gates if not g.is_set()).set()

    def finish(self) -> int:
        """Release every part, wait for them; the number of lines sent."""
        for gate in self.gates:
            gate.set()
        self.thread.join(300)
        assert self.error is None, self.error
        assert not self.thread.is_alive(), "the producer did not finish in 300 s"
        return self.lines



# ------------------------------------------------------------------------------------------------
# (a) SIGKILL mid-stream
# ------------------------------------------------------------------------------------------------
@pytest.mark.kafka
def test_sigkill_mid_stream_then_new_worker_loses_and_double_counts_nothing(
        broker, tmp_path, record_property):
    """A worker is killed (SIGKILL: no shutdown, no flush, no LeaveGroup) mid-stream; a second
    worker with the same app id takes over (after the 6 s session timeout) and gets the rest.
    Final defect-rate records per key must equal the in-process replay's exactly; every
    expected signal record must be there (at-least-once: repeats are counted, printed and
    recorded as a test property), nothing unexpected.

    The first 60% of the sample arrives at 200 events/s; the kill comes once the published
    defect-rate estimates count 1,000 plays; the rest follows after the kill.

    History: this failed in about 1 run of 7 with keys double-counted (e.g. 68 keys too
    high): the kill lands between a batch's published outputs and its state writes (which
    Faust sends in the background), the new worker processes the batch again and re-emits its
    rate-updates at new offsets. Fixed by stamping rate-updates and chains with their source
    position (input partition, offset) and applying each position once per key, with the
    stream watermark restored so that re-processing finalises turns at the same offsets.
    Deterministic form, with every possible prefix of the state writes landed:
    tests/test_processors.py::test_stage1_killed_during_state_writes_counts_every_turn_once.

    Was intermittent too (2-4 runs in 10 on a loaded machine), for three reasons found since:
    (1) signal records "missing" near the end of the stream: the collection stopped once a
    topic held as many records as expected, repeats included, before the last records had
    arrived (``collect_outputs`` now counts distinct records); (2) the second worker skipped
    hundreds of records of a partition when the first was killed before its first offset
    commit: aiokafka's seek-to-committed leaves such partitions where the fetcher left them
    (``faust_fixes`` now seeks them to the earliest); (3) old re-delivered events of devices
    that had expired and come back were dead-lettered as ``late`` (stage 1 now skips
    messages at or below the last input offset its restored state covers)."""
    lines = SAMPLE.read_bytes().splitlines()
    settings = pipeline_settings(broker.bootstrap, "sigkill")
    expected_records = replay(lines)

    first = WorkerProcess(settings, log_path=tmp_path / "first.log", loglevel="info").start()
    producer = GatedProducer(lines, broker.bootstrap, settings.input_topic, rate=200).start()
    deadline = time.monotonic() + 180
    seen = 0
    while seen < 1_000 and time.monotonic() < deadline:
        assert first.alive(), first.log_tail()
        seen = plays_so_far(settings)
    assert seen >= 1_000, f"only {seen} plays counted before the kill"
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    mid_stream = producer.held_back
    second = WorkerProcess(dataclasses.replace(settings, web_port=free_port()),
                           log_path=tmp_path / "second.log", loglevel="info").start()
    try:
        assert producer.finish() == len(lines)
        outputs = collect_or_name_missing(settings, expected_records, 240, second)
        assert second.alive(), second.log_tail()
    finally:
        second.stop()

    assert mid_stream, "the stream was complete before the kill: not mid-stream"
    check_at_least_once(outputs, expected_records, record_property)


def check_at_least_once(outputs: dict[str, list[dict]], expected_records: dict[str, list[dict]],
                        record_property: Any) -> None:
    """Every expected signal record there, nothing unexpected, repeats counted (printed and
    recorded as a test property), final defect-rate counts per key exact."""
    got, expected = canonical(outputs), canonical(expected_records)
    repeats: dict[str, int] = {}
    for name in OUTPUT_STREAMS:
        if name == DEFECT_RATES:
            continue
        missing = set(expected[name]) - set(got[name])
        unexpected = set(got[name]) - set(expected[name])
        assert not missing, f"{name}: {len(missing)} expected records missing, e.g. " \
                            f"{sorted(missing)[:2]}"
        assert not unexpected, f"{name}: {len(unexpected)} unexpected records, e.g. " \
                               f"{sorted(unexpected)[:2]}"
        repeats[name] = got[name].total() - expected[name].total()
    record_property("repeated_records", repeats)
    print(f"\nrecords repeated (at-least-once): {repeats}")
    assert all(n >= 0 for n in repeats.values())
    # Final counts per key exact: no event lost, none counted twice.
    check_final_rates(outputs[DEFECT_RATES], expected_records[DEFECT_RATES])
    assert got[DEFECT_RATES] == expected[DEFECT_RATES]


@pytest.mark.kafka
def test_rebalances_mid_stream_lose_and_double_count_nothing(broker, tmp_path, record_property):
    """A second worker joins mid-stream (two partitions move to it while the first is
    processing batches) and leaves again gracefully (they move back).

    Every signal record must arrive (at-least-once), nothing unexpected, final defect-rate
    counts exact.

    History: this lost records in every run (9 of 9; ~3% of the plays of the moved partitions,
    sometimes signal records, ``late`` dead letters): Faust JSON-encoded the tables' str keys,
    so changelog records sat in other partitions than their input records, and a worker
    taking over input partition p restored the state of other keys than p's (it then started
    those keys from zero, from the committed offsets). Tables now have raw keys
    (``processors.RawKeyTable``); ``check_tables_copartitioned`` checks the changelogs.

    Then (held back in parts, condition waits: the form here) records went missing in about
    half the runs on a loaded machine (e.g. 20 or 59 of 304 barge-ins). Measured with probe
    logging: after the second worker left, the first sought partition 0 to its committed
    offset 461 (its restored state covered 460), yet the first records its streams got were
    from 810; Faust's consumer took 462..809 for a compaction gap and committed over them. A
    fetch whose records Faust never delivered had moved aiokafka's positions on. Fixed by
    ``faust_fixes.fetch_holes``: such a fetch seeks the partition back.

    The stream comes in three parts: the second worker is started once the first has counted
    300 plays, the second part is released once it has partitions, it leaves (SIGTERM) once
    it has processed 100 input records, and the rest follows once the first worker has every
    partition back: the joins and the leave land mid-stream however slow the machine is."""
    lines = SAMPLE.read_bytes().splitlines()
    settings = pipeline_settings(broker.bootstrap, "rebalance")
    expected_records = replay(lines)
    second_settings = dataclasses.replace(settings, web_port=free_port())

    # Three parts: the second worker joins during the second, leaves before the third.
    producer = GatedProducer(lines, broker.bootstrap, settings.input_topic, rate=300,
                             cuts=(0.3, 0.6)).start()
    first = WorkerProcess(settings, log_path=tmp_path / "first.log", loglevel="info").start()
    second = None
    try:
        wait_until(lambda: plays_so_far(settings) >= 300, 180,
                   "the first worker to count 300 plays", worker=first)
        second = WorkerProcess(second_settings, log_path=tmp_path / "second.log",
                               loglevel="info").start()
        wait_until(lambda: last_assignment(second), 180,
                   "the second worker to get input partitions", worker=second)
        producer.release()
        wait_until(lambda: (consumed(second_settings) or 0) >= 100, 180,
                   "the second worker to process 100 input records", worker=second)
        assert second.stop() in (0, -signal.SIGTERM), second.log_tail()
        wait_until(lambda: len(last_assignment(first) or []) == settings.partitions, 180,
                   "the first worker to take every partition back", worker=first)
        mid_stream = producer.held_back
        assert producer.finish() == len(lines)
        outputs = collect_or_name_missing(settings, expected_records, 150, first)
    finally:
        if second is not None:
            second.stop()
        first.stop()
    assert mid_stream, "the stream was complete before the second worker left"
    record_property("plays_counted", f"{plays_counted(outputs[DEFECT_RATES])} of "
                                     f"{plays_counted(expected_records[DEFECT_RATES])}")
    check_at_least_once(outputs, expected_records, record_property)
    check_tables_copartitioned(settings)
