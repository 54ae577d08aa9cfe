"""Pseudonymised identifiers (FEEDBACK_STREAM_DEVICE_ID_KEY) and dead-letter raw copies
(FEEDBACK_STREAM_DEAD_LETTER_RAW), in the replay and on the broker: no raw device id in any
output, internal topic, table changelog or HTTP answer once the key is set."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import time
import urllib.parse
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.engine import FeedbackEngine
from stream.privacy import Pseudonymizer
from stream.records import DEAD_LETTER, OUTPUT_STREAMS
from stream.replay import replay
from stream.settings import Settings
from tests.events import turn, watermark
from tests.test_kafka_pipeline import _get
from topologies.kafka_io import produce_file, read_topic
from topologies.processors import partition_of
from topologies.runner import (
    WorkerProcess,
    collect_outputs,
    demo_settings,
    expected_counts,
    prepare_topics,
)

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample.jsonl"
KEY = "test key: not a secret"
PERSONAL = "home-7"


def personal_lines() -> list[bytes]:
    """A device that, alone, makes a personal rewrite: "play the running mix" fails or is
    rephrased to "... playlist", which then succeeds (plus the global layer learns it)."""
    lines: list[bytes] = []
    for i in range(8):
        t = 20_000_000_000 + i * 600_000  # after the sample's last event
        if i % 3 == 2:
            lines.append(turn(f"{PERSONAL}-{i}a", t, "play the running mix", device=PERSONAL,
                              tts_end_ts=t + 3000, barge_in_ts=t + 1000))
        else:
            lines.append(turn(f"{PERSONAL}-{i}a", t, "play the running mix", device=PERSONAL,
                              tts_end_ts=t + 3000))
            lines.append(turn(f"{PERSONAL}-{i}b", t + 5000, "play the running mix playlist",
                              device=PERSONAL))
    return lines


BAD_LINES = [
    # parsed far enough to know the device: the dead letter names it
    b'{"type":"turn","event_id":"bad-1","device_id":"dev-bad-1","ts":"soon","utterance":"x"}',
    # not JSON at all, the id only inside the raw bytes
    b'not json, device_id dev-bad-2',
    b'{"type":"feedback","event_id":"bad-3","device_id":"dev-bad-3","ts":1717200000000,'
    b'"ref_event_id":"nope","kind":"teach","value":"x"}',
]


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample (without its closing watermark), bad lines, a personal-rewrite device,
    then a watermark that finalises everything."""
    sample = SAMPLE.read_bytes().splitlines()
    assert b'"watermark"' in sample[-1]
    lines = sample[:-1] + BAD_LINES + personal_lines() + [watermark(20_010_000_000)]
    path = tmp_path_factory.mktemp("privacy") / "stream.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def raw_device_ids(path: Path) -> set[bytes]:
    """Every device id of the input, as bytes, also those of lines that are dead-lettered."""
    ids = set(re.findall(rb'"device_id":"([^"]+)"', path.read_bytes()))
    ids.add(b"dev-bad-2")
    return ids


def leaks(data: bytes, ids: set[bytes]) -> set[bytes]:
    return {i for i in ids if i in data}


def run_replay(path: Path, out: Path, **settings: Any) -> dict[str, list[dict[str, Any]]]:
    return replay_with_engine(path, out, **settings)[0]


def replay_with_engine(path: Path, out: Path, **settings: Any
                       ) -> tuple[dict[str, list[dict[str, Any]]], FeedbackEngine]:
    """The replay's records per stream (read back from ``out``) and its engine."""
    engine, _ = replay(str(path), out, Settings(**settings), progress=False)
    return {name: [orjson.loads(line) for line in (out / f"{name}.jsonl").read_bytes().splitlines()]
            for name in OUTPUT_STREAMS}, engine


@pytest.fixture(scope="module")
def keyed(stream_file: Path) -> tuple[dict[str, list[dict[str, Any]]], FeedbackEngine]:
    """The replay of ``stream_file`` with the device-id key set (only read: its records and
    its engine's rewrite layers), run once for the module."""
    return replay_with_engine(stream_file, stream_file.parent / "keyed", device_id_key=KEY)


def pseudonymised(record: dict[str, Any], p: Pseudonymizer) -> dict[str, Any]:
    """What the keyed run must publish for a record of the plain run, computed the way a
    consumer who knows the key would."""
    rec = dict(record)
    for field in ("device_id", "event_id", "rephrase_of"):
        if isinstance(rec.get(field), str):
            rec[field] = p(rec[field])
    if "event_ids" in rec:
        rec["event_ids"] = [p(e) for e in rec["event_ids"]]
    if rec.get("reason") == "unknown_turn":  # the error names the (pseudonymised) reference
        rec["error"] = re.sub(r"'([^']*)'$", lambda m: repr(p(m[1])), rec["error"])
    return rec


def test_pseudonymised_replay_is_the_plain_replay_with_hashed_ids(stream_file: Path,
                                                                 tmp_path: Path,
                                                                 keyed: tuple) -> None:
    plain = run_replay(stream_file, tmp_path / "plain")
    keyed_dir, (keyed_records, _) = stream_file.parent / "keyed", keyed
    p = Pseudonymizer(KEY)
    assert p("dev00059") == hmac.new(KEY.encode(), b"dev00059",
                                     hashlib.sha256).hexdigest()[:32]
    for name in OUTPUT_STREAMS:
        want = [pseudonymised(r, p) for r in plain[name]]
        if name == DEAD_LETTER:  # no raw copy by default with the key set
            for rec in want:
                assert "raw_truncated" not in rec  # (size and hash would be there already)
                raw = (base64.b64decode(rec["raw"]) if rec["raw_encoding"] == "base64"
                       else rec["raw"].encode("utf-8", "surrogatepass"))
                rec.update(raw=None, raw_encoding=None, raw_size=len(raw),
                           raw_sha256=hashlib.sha256(raw).hexdigest())
        assert keyed_records[name] == want, name
    personal = [r for r in keyed_records["rewrite-triggers"] if r["layer"] == "personal"]
    assert personal and {r["device_id"] for r in personal} == {p(PERSONAL)}
    assert len(keyed_records[DEAD_LETTER]) >= len(BAD_LINES)

    ids = raw_device_ids(stream_file)
    for name in OUTPUT_STREAMS:
        data = (keyed_dir / f"{name}.jsonl").read_bytes()
        assert not leaks(data, ids), name
    assert leaks((tmp_path / "plain" / "defects.jsonl").read_bytes(), ids)  # the scan can fail


def test_personal_rewrite_lookup_by_pseudonym(keyed: tuple) -> None:
    engine = keyed[1]  # the keyed replay's, at the end of its input
    p = Pseudonymizer(KEY)
    rec = engine.rewrites.lookup("play the running mix", p(PERSONAL))
    assert rec is not None and rec["layer"] == "personal" and rec["device_id"] == p(PERSONAL)
    assert engine.rewrites.lookup("play the running mix", PERSONAL)["layer"] == "global"


LONG = orjson.dumps({"type": "turn", "event_id": "long", "device_id": "dev-long",
                     "ts": 1717200000000, "utterance": "x" * 100_000})


@pytest.mark.parametrize("mode", ["prefix", "none"])
def test_dead_letter_raw_modes_in_replay(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([*BAD_LINES, LONG]) + b"\n")
    dead = run_replay(path, tmp_path / "out", dead_letter_raw=mode)[DEAD_LETTER]
    assert len(dead) == len(BAD_LINES) + 1
    for rec, line in zip(dead, [*BAD_LINES, LONG], strict=True):
        check_dead_letter(rec, line, mode, Settings().dead_letter_max_raw_bytes)


def check_dead_letter(rec: dict[str, Any], line: bytes, mode: str, cap: int) -> None:
    if mode == "none":
        assert rec["raw"] is None and rec["raw_encoding"] is None
        assert rec["raw_size"] == len(line)
        assert rec["raw_sha256"] == hashlib.sha256(line).hexdigest()
    elif len(line) > cap:
        assert rec["raw"].encode() == line[:cap] and rec["raw_truncated"] is True
        assert rec["raw_size"] == len(line)
        assert rec["raw_sha256"] == hashlib.sha256(line).hexdigest()
    else:
        assert rec["raw"].encode() == line and "raw_truncated" not in rec


def test_dead_letter_raw_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="FEEDBACK_STREAM_DEAD_LETTER_RAW='all'"):
        FeedbackEngine(Settings(dead_letter_raw="all"))
    assert "s3cret" not in repr(Settings(device_id_key="s3cret"))


# --------------------------------------------------------------------------------------------
# on the broker
# --------------------------------------------------------------------------------------------
def all_topics_of(settings: Settings, uid: str) -> list[str]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        return sorted(t for t in admin.list_topics()
                      if uid in t and t != settings.input_topic)
    finally:
        admin.close()


@pytest.mark.kafka
def test_worker_keeps_raw_device_ids_out_of_every_topic_and_answer(broker, stream_file: Path
                                                                  ) -> None:
    uid = f"priv-{uuid.uuid4().hex[:6]}"
    settings = demo_settings(broker.bootstrap, app_id=f"fs-{uid}", input_topic=f"in-{uid}",
                             topic_prefix=f"{uid}.", device_id_key=KEY)
    prepare_topics(settings)
    p = Pseudonymizer(KEY)
    expected = expected_counts(stream_file, settings)
    with WorkerProcess(settings) as worker:
        produce_file(stream_file, broker.bootstrap, settings.input_topic, progress=False)
        outputs = collect_outputs(settings, expected, timeout_s=150, worker=worker)
        answers = http_answers(settings, p)
        time.sleep(1.0)  # the last batch's table writes follow its outputs
    ids = raw_device_ids(stream_file)

    # Every byte of every topic the worker wrote, output, internal and changelog alike.
    topics = all_topics_of(settings, uid)
    changelogs = {f"fs-{uid}-{table}-changelog" for table in (
        "device-state", "personal-rewrites", "defect-rates", "global-rewrites")}
    assert changelogs | {settings.topic("rephrase-chains"), settings.topic("rate-updates"),
                         settings.topic(DEAD_LETTER)} <= set(topics), topics
    scanned = Counter()
    for topic in topics:
        for rec in read_topic(settings.bootstrap_servers, topic, timeout_s=1.0):
            data = (rec.key or b"") + b"\x00" + (rec.value or b"")
            assert not leaks(data, ids), (topic, data[:300])
            scanned[topic] += 1
    assert all(scanned[t] > 0 for t in changelogs), scanned
    for answer in answers:
        assert not leaks(answer, ids), answer
    log = worker.log_path.read_bytes()  # warn level, as `demo` runs it
    assert not leaks(log, ids), log[-2000:]
    # ... while the input topic of course holds them (the scan would see them).
    raw_in = read_topic(settings.bootstrap_servers, settings.input_topic, timeout_s=1.0)
    assert leaks(b"".join(r.value or b"" for r in raw_in), ids) == ids

    # Pseudonymised state stays with its input partition (salted changelog keys).
    by_pseudonym = {p(i.decode()): i for i in ids}
    for rec in read_topic(settings.bootstrap_servers, f"fs-{uid}-device-state-changelog",
                          timeout_s=1.0):
        if rec.value and not rec.key.startswith(b"\x00"):
            raw_id = by_pseudonym[orjson.loads(rec.value)["device_id"]]
            assert rec.partition == partition_of(raw_id, settings.partitions)

    assert all(d["raw"] is None and len(d["raw_sha256"]) == 64 for d in outputs[DEAD_LETTER])
    personal = [r for r in outputs["rewrite-triggers"] if r["layer"] == "personal"]
    assert {r["device_id"] for r in personal} == {p(PERSONAL)}


def http_answers(settings: Settings, p: Pseudonymizer) -> list[bytes]:
    """The worker's HTTP answers: personal rewrite by pseudonym, lookups, metrics."""
    query = urllib.parse.urlencode({"utterance": "play the running mix",
                                    "device_id": p(PERSONAL)})
    status, body, _ = _get(settings, f"/rewrites?{query}")
    assert status == 200, body
    rec = orjson.loads(body)
    assert rec["layer"] == "personal" and rec["device_id"] == p(PERSONAL)
    answers = [body]
    for path in ("/rewrites?utterance=play%20the%20running%20mix&device_id=home-7",
                 "/defect-rates?utterance=play%20the%20running%20mix",
                 "/defect-rates?key_type=device_type&key=speaker", "/metrics"):
        status, body, _ = _get(settings, path)
        assert status == 200, (path, body)
        answers.append(body)
    return answers


@pytest.mark.kafka
def test_worker_dead_letters_keep_at_most_the_prefix(broker, tmp_path: Path) -> None:
    uid = f"dl-{uuid.uuid4().hex[:6]}"
    settings = demo_settings(broker.bootstrap, app_id=f"fs-{uid}", input_topic=f"in-{uid}",
                             topic_prefix=f"{uid}.")
    prepare_topics(settings)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([*BAD_LINES, LONG]) + b"\n")
    expected = Counter({DEAD_LETTER: len(BAD_LINES) + 1})
    with WorkerProcess(settings) as worker:
        produce_file(path, broker.bootstrap, settings.input_topic, progress=False)
        dead = collect_outputs(settings, expected, timeout_s=90, worker=worker)[DEAD_LETTER]
    lines = {line[:40]: line for line in [*BAD_LINES, LONG]}
    assert len(dead) == len(lines)
    for rec in dead:
        line = lines[rec["raw"].encode()[:40]]
        check_dead_letter(rec, line, "prefix", settings.dead_letter_max_raw_bytes)
    assert sum(1 for rec in dead if rec.get("raw_truncated")) == 1


def test_dead_letter_none_in_worker_settings_env() -> None:
    """The worker process sees the settings through its environment (both modes)."""
    from topologies.runner import settings_env

    env = settings_env(dataclasses.replace(Settings(), dead_letter_raw="none",
                                           device_id_key=KEY))
    s = Settings.from_env(env)
    assert s.dead_letter_raw == "none" and s.device_id_key == KEY
