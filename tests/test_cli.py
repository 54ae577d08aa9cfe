"""The command line and the README agree with the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from stream.records import OUTPUT_STREAMS
from tests.events import turn
from topologies.settings import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topologies.cli", *args], input=stdin,
                          capture_output=True, timeout=120, cwd=ROOT)


def test_replay_reads_stdin_and_writes_every_stream(tmp_path):
    lines = turn("a", 0, "play jazz", barge_in_ts=100) + b"\n\n{broken\n"
    proc = cli("replay", "-", "--out", str(tmp_path), stdin=lines)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{name}.jsonl" for name in OUTPUT_STREAMS)
    (dead,) = [orjson.loads(x) for x in (tmp_path / "dead-letter.jsonl").read_bytes()
               .splitlines()]
    assert dead["reason"] == "invalid_json" and dead["source"] == {"file": "-", "line": 3}
    assert b"1 processed, 1 dead-lettered" in proc.stdout


def test_replay_missing_file_is_a_clear_error(tmp_path):
    proc = cli("replay", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert b"cannot read input" in proc.stderr and b"Traceback" not in proc.stderr


def test_replay_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = cli("replay", str(ROOT / "data" / "sample.jsonl"), "--out", str(blocker / "sub"))
    assert proc.returncode == 2
    assert b"cannot write to output directory" in proc.stderr and b"Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["replay", "demo", "worker", "broker", "produce"])
def test_every_command_has_help(command):
    proc = cli(command, "--help")
    assert proc.returncode == 0 and len(proc.stdout) > 300, proc.stderr


def test_top_level_help_lists_every_setting():
    out = cli("--help").stdout.decode()
    for name, _, _ in KafkaSettings.describe():
        assert name in out


def test_readme_documents_every_setting_stream_and_reason():
    from stream.schema import REASONS

    for name, _, _ in KafkaSettings.describe():
        assert f"`{name}`" in README, name
    for stream in OUTPUT_STREAMS:
        assert f"`{stream}`" in README, stream
    for reason in REASONS:
        assert f"`{reason}`" in README, reason


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    block = re.search(r"```sh\n(.*?)```", README, re.S).group(1).splitlines()
    assert block[0].split("#")[0].strip() == "pip install -e . && feedback-stream demo"
    test_command = block[1].split("#")[0].strip()
    assert test_command == "bash scripts/test.sh"
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_replay_serves_metrics_while_running(tmp_path):
    import threading
    import time
    import urllib.request

    from topologies.broker import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "topologies.cli", "replay", str(ROOT / "data" / "sample.jsonl"),
         "--out", str(tmp_path), "--no-progress", "--metrics-port", str(port),
         "--metrics-hold", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    threading.Timer(60, proc.kill).start()
    try:
        done = re.compile(r'^feedback_stream_events_total\{outcome="ok",type="turn"\} 3610\.0$',
                          re.M)
        text, deadline = "", time.monotonic() + 30
        while not done.search(text) and time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                continue
        assert done.search(text), text[-2000:]
        assert "feedback_stream_top_defect_rate{" in text
        assert re.search(r'^feedback_stream_dead_letters_total\{reason="invalid_json"\} '
                         r'[1-9]', text, re.M)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.kafka
def test_worker_command_serves_and_stops_cleanly_on_sigterm():
    """`feedback-stream worker` with no bootstrap servers starts the embedded broker and a
    worker; SIGTERM (docker stop) stops both and exits 0."""
    import signal
    import time
    import urllib.request

    from topologies.broker import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "topologies.cli", "worker", "--web-port",
                             str(port), "-l", "warn"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    try:
        deadline, up = time.monotonic() + 60, False
        while not up and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    up = r.status == 200
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
        assert up, "worker never served /metrics"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        err = proc.stderr.read().decode()
        child = re.search(r"worker started \(pid (\d+)", err)
        assert child, err
        time.sleep(1)
        with pytest.raises(ProcessLookupError):
            os.kill(int(child.group(1)), 0)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_demo_summary_counts_defect_rate_plays_not_records():
    """The worker publishes one estimate per key per batch, the replay one per update: the
    demo compares the plays the last estimates count with the replay's updates."""
    from collections import Counter

    from topologies.cli_run import demo_summary

    estimate = {"key_type": "utterance", "key": "play jazz", "defects": 1, "rate": 0.5,
                "low": 0.1, "high": 0.9, "updated_ts": 1}
    outputs = {name: [] for name in OUTPUT_STREAMS}
    outputs["defect-rates"] = [{**estimate, "plays": 2}, {**estimate, "plays": 5},
                               {**estimate, "key": "stop", "plays": 1}]
    text = demo_summary(outputs, KafkaSettings(), Counter({"defect-rates": 6}), top=3)
    assert "3  estimates of 2 keys counting 6 plays [6 updates]" in text


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_and_docs_links_resolve():
    """README keeps the user's sections and links the moved design/operations detail; every
    relative link (file and #anchor) in README.md and docs/ points at something that exists."""
    for heading in ("Security and privacy", "Accuracy", "Development", "Guarantees", "Settings"):
        assert re.search(rf"^## {heading}$", README, re.M), heading
    assert "docs/design.md" in README and "docs/operations.md" in README
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            assert linked.exists(), f"{doc.name}: {target}"
            if anchor and linked.suffix == ".md":
                anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(),
                                                          re.M)}
                assert anchor in anchors, f"{doc.name}: {target}"
