"""TLS end to end: every client of the project through a real TLS terminator (stunnel4) in
front of the embedded broker, with a CA made by the test; refusals are one clear line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.tls import TLSBroker, start_tls_broker
from topologies.broker import BrokerError
from topologies.kafka_io import KafkaIOError, read_topic, security_kwargs
from topologies.runner import WorkerProcess, demo_settings
from topologies.settings import KafkaSettings

pytestmark = pytest.mark.kafka

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample.jsonl"


@pytest.fixture(scope="session")
def tls_broker() -> Iterator[TLSBroker]:
    try:
        tls = start_tls_broker()
    except (BrokerError, RuntimeError) as exc:
        pytest.fail(f"the TLS broker did not start: {exc}", pytrace=False)
    try:
        yield tls
    finally:
        tls.stop()


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's first 1,000 events and its closing watermark (finalises every turn)."""
    lines = SAMPLE.read_bytes().splitlines()
    path = tmp_path_factory.mktemp("tls") / "small.jsonl"
    path.write_bytes(b"\n".join(lines[:1000] + lines[-1:]) + b"\n")
    return path


def tls_env(cafile: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "FEEDBACK_STREAM_SECURITY_PROTOCOL": "SSL",
            "FEEDBACK_STREAM_SSL_CAFILE": cafile, **extra}


def cli(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topologies.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_demo_worker_and_reader_over_tls(tls_broker: TLSBroker, small_sample: Path) -> None:
    """`demo --bootstrap-servers`: topic creation (kafka-python), the Faust worker's consumer
    and producers, the replay (aiokafka) and the output reader, all through TLS; the demo
    exits 0 only when every output topic holds what the in-process engine makes of the file."""
    uid = uuid.uuid4().hex[:6]
    proc = cli("demo", "--bootstrap-servers", tls_broker.bootstrap, "--file", str(small_sample),
               "--no-progress", "--timeout", "120",
               env=tls_env(tls_broker.cafile, FEEDBACK_STREAM_APP_ID=f"tls-{uid}",
                           FEEDBACK_STREAM_INPUT_TOPIC=f"in-{uid}",
                           FEEDBACK_STREAM_TOPIC_PREFIX=f"{uid}."))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{uid}.defects" in proc.stdout
    assert "replayed 1001 events" in proc.stderr


def test_produce_cli_and_librdkafka_over_tls(tls_broker: TLSBroker, small_sample: Path) -> None:
    """`feedback-stream produce` writes over TLS and librdkafka reads it back; librdkafka
    writes over TLS and the project's reader (aiokafka) reads that back."""
    from confluent_kafka import Consumer, Producer

    settings = KafkaSettings(security_protocol="SSL", ssl_cafile=tls_broker.cafile)
    rdkafka = {"bootstrap.servers": tls_broker.bootstrap, **security_kwargs(settings, "confluent")}
    topic = f"produced-{uuid.uuid4().hex[:6]}"
    proc = cli("produce", str(small_sample), "--bootstrap-servers", tls_broker.bootstrap,
               "--topic", topic, "--partitions", "2", "--no-progress",
               env=tls_env(tls_broker.cafile))
    assert proc.returncode == 0, proc.stderr
    want = 1000 + 2  # the watermark goes to both partitions
    consumer = Consumer({**rdkafka, "group.id": f"g-{topic}", "auto.offset.reset": "earliest",
                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000})
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
    finally:
        consumer.close()
    assert len(got) == want
    lines = small_sample.read_bytes().splitlines()
    assert sorted(set(got)) == sorted(set(lines))

    back = f"rdkafka-{uuid.uuid4().hex[:6]}"
    producer = Producer(rdkafka)
    for i in range(50):
        producer.produce(back, key=f"k{i}".encode(), value=orjson.dumps({"i": i}))
    assert producer.flush(30) == 0
    records = read_topic(tls_broker.bootstrap, back, expected=50, timeout_s=10,
                         security_protocol="SSL", ssl_cafile=tls_broker.cafile)
    assert sorted(orjson.loads(r.value)["i"] for r in records) == list(range(50))


REFUSALS = {
    # case: (which bootstrap, which CA, what the one line must say)
    "no CA (system store)": ("bootstrap", "", "set FEEDBACK_STREAM_SSL_CAFILE"),
    "another CA": ("bootstrap", "other_cafile", "did not sign it"),
    "wrong host name": ("wrong_host_bootstrap", "cafile", "IP address mismatch"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_with_one_clear_line(tls_broker: TLSBroker, small_sample: Path, tmp_path: Path,
                                     case: str) -> None:
    which, ca_attr, reason = REFUSALS[case]
    bootstrap = getattr(tls_broker, which)
    cafile = getattr(tls_broker, ca_attr) if ca_attr else ""
    env = tls_env(cafile)

    def one_clear_line(text: str) -> None:
        lines = text.strip().splitlines()
        assert len(lines) == 1, text
        assert "certificate verify failed" in lines[0] and reason in lines[0], lines[0]
        assert bootstrap in lines[0] and "Traceback" not in text

    started = time.monotonic()
    proc = cli("produce", str(small_sample), "--bootstrap-servers", bootstrap, "--no-progress",
               env=env, timeout=60)
    assert proc.returncode == 1
    one_clear_line(proc.stderr)
    proc = cli("worker", "--bootstrap-servers", bootstrap, env=env, timeout=60)
    assert proc.returncode == 1
    one_clear_line(proc.stderr)
    with pytest.raises(KafkaIOError, match=reason):
        read_topic(bootstrap, "any", security_protocol="SSL", ssl_cafile=cafile)

    # The Faust worker itself (`faust -A topologies.app worker`), not only the CLI around it.
    settings = dataclasses.replace(demo_settings(bootstrap, state_dir=str(tmp_path)),
                                   security_protocol="SSL", ssl_cafile=cafile)
    worker = WorkerProcess(settings, log_path=tmp_path / "worker.log").start()
    deadline = time.monotonic() + 60
    while worker.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not worker.alive(), "the worker kept running with a certificate it cannot verify"
    assert worker.proc is not None and worker.proc.returncode not in (0, None)
    one_clear_line(worker.log_path.read_text())
    # Refused at once, not after the clients' retry timeouts.
    assert time.monotonic() - started < 50
