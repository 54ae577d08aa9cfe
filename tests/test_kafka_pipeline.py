"""The Faust topology on the real (embedded tansu) broker, compared with the in-process replay.

Every test uses its own app id and topic names on the session's broker. Workers are real
``faust -A topologies.app worker`` processes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest

from stream.engine import FeedbackEngine
from stream.records import DEFECT_RATES, OUTPUT_STREAMS, REWRITE_TRIGGERS
from stream.replay import iter_lines
from tests.waits import last_assignment, metrics_matching, wait_until
from topologies import runner
from topologies.broker import free_port
from topologies.kafka_io import produce_file, read_topic
from topologies.processors import partition_of
from topologies.runner import (
    WorkerProcess,
    collect_outputs,
    demo_settings,
    expected_counts,
    plays_counted,
    prepare_topics,
    read_records,
)
from topologies.settings import KafkaSettings

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample.jsonl"


def pipeline_settings(broker, label: str) -> KafkaSettings:
    uid = f"{label}-{uuid.uuid4().hex[:6]}"
    settings = demo_settings(broker.bootstrap, app_id=f"fs-{uid}",
                             input_topic=f"interactions-{uid}", topic_prefix=f"{uid}.")
    prepare_topics(settings)
    return settings


def expected_records(path: Path = SAMPLE) -> dict[str, list[dict]]:
    """What the in-process replay of ``path`` publishes, per output stream."""
    eng = FeedbackEngine()
    out: dict[str, list[dict]] = {name: [] for name in OUTPUT_STREAMS}
    with open(path, "rb") as f:
        for number, line in iter_lines(f):
            for o in eng.process(line, {"line": number}):
                out[o.stream].append(o.record)
    for o in eng.flush():
        out[o.stream].append(o.record)
    return out


def canonical(records: dict[str, list[dict]]) -> dict[str, Counter]:
    """Signal records as multisets, dead letters without their (transport-specific) source,
    defect-rates as the final record per key, rewrite triggers as the final decision."""
    view: dict[str, Counter] = {}
    for name, recs in records.items():
        if name == DEFECT_RATES:
            last = {(r["key_type"], r["key"]): r for r in recs}
            recs = list(last.values())
        elif name == REWRITE_TRIGGERS:
            # The global layer sees chains in arrival order, which differs between one
            # process and four partitions: *when* a rewrite is published may differ, and of
            # two rewrites within the hysteresis of each other the first one published stays.
            # Which utterances get a rewrite may not differ; personal rewrites are exact.
            last = {(r["layer"], r["device_id"], r["utterance"]): r for r in recs}
            recs = [{"layer": r["layer"], "device_id": r["device_id"],
                     "utterance": r["utterance"],
                     "rewrite": r["rewrite"] if r["layer"] == "personal"
                     else r["rewrite"] is not None}
                    for r in last.values()]
        view[name] = Counter(
            orjson.dumps({k: v for k, v in r.items() if k != "source"},
                         option=orjson.OPT_SORT_KEYS) for r in recs)
    return view


@pytest.fixture(scope="module")
def expected() -> dict[str, Counter]:
    return canonical(expected_records())


@pytest.fixture(scope="module")
def expected_n() -> Counter:
    return expected_counts(SAMPLE, KafkaSettings())


@pytest.mark.kafka
def test_faust_pipeline_equals_in_process_replay(broker, expected, expected_n):
    settings = pipeline_settings(broker, "equal")
    with WorkerProcess(settings) as worker:
        produce_file(SAMPLE, broker.bootstrap, settings.input_topic, progress=False)
        outputs = collect_outputs(settings, expected_n, timeout_s=120, worker=worker)
        check_web_views(settings, outputs)
    got = canonical(outputs)
    for name in OUTPUT_STREAMS:
        assert got[name] == expected[name], name
    dead = outputs["dead-letter"]
    assert all(d["source"]["topic"] == settings.input_topic for d in dead)
    assert all(isinstance(d["source"]["offset"], int) for d in dead)


@pytest.mark.kafka
def test_non_python_client_reads_output_topic(broker, expected, expected_n, tmp_path):
    """librdkafka (via confluent-kafka, and the kcat binary) reads a topic the worker wrote."""
    from confluent_kafka import Consumer

    settings = pipeline_settings(broker, "interop")
    with WorkerProcess(settings) as worker:
        produce_file(SAMPLE, broker.bootstrap, settings.input_topic, progress=False)
        collect_outputs(settings, expected_n, timeout_s=120, worker=worker)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"c-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                         "heartbeat.interval.ms": 1000})
    consumer.subscribe([settings.topic("defects")])
    records, deadline = [], time.monotonic() + 60
    try:
        while len(records) < expected_n["defects"] and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                records.append((msg.key(), orjson.loads(msg.value())))
    finally:
        consumer.close()
    assert Counter(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for _, r in records) == \
        expected["defects"]
    assert all(key.decode() == rec["event_id"] for key, rec in records)

    # Debian's kcat binary, too: its own librdkafka (2.0.2) cannot talk to tansu
    # (ApiVersionRequest fails), so it runs against the newer librdkafka of the
    # confluent-kafka wheel.
    kcat = shutil.which("kcat")
    assert kcat, "kcat not found: apt-get install kcat (scripts/test.sh does)"
    libdir = tmp_path / "rdkafka"
    libdir.mkdir()
    import confluent_kafka

    (bundled,) = (Path(confluent_kafka.__file__).resolve().parent.parent /
                  "confluent_kafka.libs").glob("librdkafka*.so*")
    (libdir / "librdkafka.so.1").symlink_to(bundled)
    proc = subprocess.run(
        [kcat, "-b", broker.bootstrap, "-C", "-t", settings.topic("defects"), "-o", "beginning",
         "-c", str(expected_n["defects"]), "-f", "%k\t%s\n", "-q"],
        capture_output=True, timeout=60, env={**os.environ, "LD_LIBRARY_PATH": str(libdir)})
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(b"\t", 1) for line in proc.stdout.splitlines()]
    assert Counter(orjson.dumps(orjson.loads(v), option=orjson.OPT_SORT_KEYS)
                   for _, v in rows) == expected["defects"]


def _split_sample(tmp_path: Path, fraction: float) -> tuple[Path, Path]:
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    cut = int(len(lines) * fraction)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_bytes(b"".join(lines[:cut]))
    second.write_bytes(b"".join(lines[cut:]))
    return first, second


def _wait_for_plays(settings: KafkaSettings, at_least: int, timeout_s: float) -> int:
    """Wait until the defect-rate estimates count ``at_least`` updates (plays)."""
    deadline = time.monotonic() + timeout_s
    while True:
        n = plays_counted(read_records(settings, DEFECT_RATES, timeout_s=1.0, max_s=2.0))
        if n >= at_least or time.monotonic() > deadline:
            return n
        time.sleep(0.5)


@pytest.mark.kafka
def test_restart_mid_stream_continues_from_table_state(broker, expected, expected_n,
                                                       tmp_path):
    settings = pipeline_settings(broker, "restart")
    first, second = _split_sample(tmp_path, 0.5)
    with WorkerProcess(settings) as worker:
        produce_file(first, broker.bootstrap, settings.input_topic, progress=False)
        seen = _wait_for_plays(settings, 5_000, 90)
        assert seen >= 5_000, worker.log_tail()
    # A new worker process (same app id -> same group and tables) gets the rest.
    settings2 = dataclasses.replace(settings, web_port=free_port())
    with WorkerProcess(settings2) as worker:
        produce_file(second, broker.bootstrap, settings.input_topic, progress=False)
        outputs = collect_outputs(settings, expected_n, timeout_s=150, worker=worker)
    got = canonical(outputs)
    for name in OUTPUT_STREAMS:
        if name == DEFECT_RATES:
            # Final counts per key exact: the state continued instead of resetting, nothing
            # was lost and nothing counted twice.
            assert got[name] == expected[name]
        else:
            # At-least-once: every expected record is there, nothing else; a record may repeat.
            assert set(got[name]) == set(expected[name]), name
            assert got[name].total() - expected[name].total() <= 50, name


@pytest.mark.kafka
def test_two_workers_in_one_group_equal_one(broker, expected, expected_n):
    settings = pipeline_settings(broker, "two")
    other = dataclasses.replace(settings, web_port=free_port())
    with WorkerProcess(settings, loglevel="info") as w1, \
            WorkerProcess(other, loglevel="info") as w2:
        # Both joined before data arrives, so both get partitions.
        wait_until(lambda: all(last_assignment(w) for w in (w1, w2)), 120,
                   "both workers to get input partitions", w1)
        produce_file(SAMPLE, broker.bootstrap, settings.input_topic, progress=False)
        outputs = collect_outputs(settings, expected_n, timeout_s=150, worker=w1)
        assert w2.alive(), w2.log_tail()
        shares = [last_assignment(w) for w in (w1, w2)]
    assert all(shares), f"one worker got no input partition: {shares}"
    assert sorted(shares[0] + shares[1]) == list(range(settings.partitions))
    got = canonical(outputs)
    for name in OUTPUT_STREAMS:
        assert got[name] == expected[name], name
    check_tables_copartitioned(settings)


def check_tables_copartitioned(settings: KafkaSettings) -> None:
    """Every changelog record sits in the partition the input record with the same key is in:
    what a worker that owns input partition p restores is exactly the state of p's keys.
    (Found broken by a rebalance test: Faust JSON-encodes str table keys, ``"dev1"`` with
    quotes hashed elsewhere, and a worker taking over half the partitions restored the wrong
    half of the state.)"""
    for table in ("device-state", "defect-rates", "personal-rewrites"):
        records = read_topic(settings.bootstrap_servers, f"{settings.app_id}-{table}-changelog",
                             timeout_s=1.0)
        assert records, table
        misplaced = [(r.key, r.partition) for r in records
                     if r.partition != partition_of(r.key, settings.partitions)]
        assert not misplaced, f"{table}: {len(misplaced)} of {len(records)} records in another " \
                              f"partition than their key's, e.g. {misplaced[:3]}"


def test_collect_outputs_counts_distinct_records(monkeypatch):
    """At-least-once repeats must not end the collection before the last records arrived."""
    reads = iter([[{"a": 1}, {"a": 1}], [{"a": 1}, {"a": 1}, {"a": 2}]])
    calls: list[int | None] = []

    def fake_read(settings, stream, timeout_s, expected=None, max_s=None):
        if stream != "barge-ins":
            return []
        calls.append(expected)
        return next(reads)

    monkeypatch.setattr(runner, "read_records", fake_read)
    outputs = collect_outputs(KafkaSettings(), Counter({"barge-ins": 2}), timeout_s=5)
    assert outputs["barge-ins"] == [{"a": 1}, {"a": 1}, {"a": 2}]
    assert calls == [2, None]  # after repeats: read until quiet, not up to a count


def _get(settings: KafkaSettings, path: str) -> tuple[int, bytes, str]:
    url = f"http://127.0.0.1:{settings.web_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def check_web_views(settings: KafkaSettings, outputs: dict[str, list[dict]]) -> None:
    """The worker's HTTP views: current estimates and Prometheus metrics."""
    final = {(r["key_type"], r["key"]): r for r in outputs[DEFECT_RATES]}
    status, body, ctype = _get(settings, "/defect-rates?utterance=Play%20Harry%20Potter!")
    assert status == 200 and "json" in ctype
    assert orjson.loads(body) == final[("utterance", "play harry potter")]
    status, body, _ = _get(settings, "/defect-rates?key_type=intent&key=PlayVideo")
    assert status == 200 and orjson.loads(body) == final[("intent", "PlayVideo")]
    status, body, _ = _get(settings, "/defect-rates?utterance=never%20said%20this")
    assert status == 404 and "no estimate" in orjson.loads(body)["error"]
    status, body, _ = _get(settings, "/defect-rates")
    assert status == 400 and "utterance" in orjson.loads(body)["error"]

    latest = {(r["layer"], r["device_id"], r["utterance"]): r for r in outputs["rewrite-triggers"]}
    glob = latest[("global", None, "play harry potter")]
    status, body, _ = _get(settings, "/rewrites?utterance=play%20harry%20potter")
    assert status == 200 and orjson.loads(body)["rewrite"] == glob["rewrite"]
    personal = [r for r in latest.values() if r["layer"] == "personal" and r["rewrite"]]
    for rec in personal:
        query = urllib.parse.urlencode({"utterance": rec["utterance"],
                                        "device_id": rec["device_id"]})
        status, body, _ = _get(settings, f"/rewrites?{query}")
        assert status == 200 and orjson.loads(body)["layer"] == "personal"
        assert orjson.loads(body)["rewrite"] == rec["rewrite"]
    status, body, _ = _get(settings, "/rewrites?utterance=hello%20there")
    assert status == 404 and "no rewrite" in orjson.loads(body)["error"]
    status, body, _ = _get(settings, "/defect-rates?key_type=bogus&key=x")  # a bad request,
    assert status == 400 and "unknown key_type" in orjson.loads(body)["error"]  # not a miss

    # The top-K gauge is refreshed every 5 s: wait for the first refresh after the outputs.
    top = re.compile(r'^feedback_stream_top_defect_rate\{rank="1",utterance="[^"]+"\} 0\.9', re.M)
    wait_until(lambda: metrics_matching(settings.web_port, top), 60, "the top-K gauge")
    status, body, ctype = _get(settings, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    text = body.decode()
    ok = sum(float(m) for m in re.findall(
        r'^feedback_stream_events_total\{outcome="ok",type="(?:turn|feedback|watermark)"\} '
        r'(\S+)$', text, re.M))
    # watermark events arrive once per partition
    with open(SAMPLE, "rb") as f:
        lines = sum(1 for _ in iter_lines(f))
    assert ok == lines - len(outputs["dead-letter"]) + settings.partitions - 1
    assert re.search(r'^feedback_stream_signals_total\{kind="defect"\} ' +
                     f"{len(outputs['defects'])}.0$", text, re.M)
    assert top.search(text)
    lint = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
