"""The command line and the README agree with the code.

Most tests run a command in this process (``run_cli``, conftest.py): they check what it does
(exit code, messages, files), and a child interpreter costs ~2 s of CPU (start-up and the
engine's imports); stdin is then a file object standing in for it, and a command that holds
(metrics served while running) runs in a thread. True subprocesses (``cli``) stay where the
process is the point: ``--help``, an exit code through ``sys.exit``, the Kafka tests.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from stream.records import OUTPUT_STREAMS
from tests.events import turn
from tests.waits import metrics_matching, scrape, wait_until
from topologies.settings import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def cli(*args: str) -> subprocess.CompletedProcess:
    """``feedback-stream ARGS`` in a child interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "topologies.cli", *args],
                          capture_output=True, timeout=120, cwd=ROOT)


def test_replay_reads_stdin_and_writes_every_stream(tmp_path, run_cli, monkeypatch):
    lines = turn("a", 0, "play jazz", barge_in_ts=100) + b"\n\n{broken\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines)))
    proc = run_cli("replay", "-", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{name}.jsonl" for name in OUTPUT_STREAMS)
    (dead,) = [orjson.loads(x) for x in (tmp_path / "dead-letter.jsonl").read_bytes()
               .splitlines()]
    assert dead["reason"] == "invalid_json" and dead["source"] == {"file": "-", "line": 3}
    assert b"1 processed, 1 dead-lettered" in proc.stdout


def test_replay_missing_file_is_a_clear_error(tmp_path, run_cli):
    proc = run_cli("replay", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert b"cannot read input" in proc.stderr and b"Traceback" not in proc.stderr


def test_replay_unwritable_output_is_a_clear_error(tmp_path, run_cli):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("replay", str(ROOT / "data" / "sample.jsonl"), "--out", str(blocker / "sub"))
    assert proc.returncode == 2
    assert b"cannot write to output directory" in proc.stderr and b"Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["replay", "demo", "worker", "broker", "produce"])
def test_every_command_has_help(command, run_cli):
    proc = run_cli(command, "--help")
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


def test_replay_serves_metrics_while_running(tmp_path, run_cli, monkeypatch):
    """The replay's own HTTP server answers while the command runs (here: holds its final
    metrics); the command runs in a thread of this process, its hold ended by the test."""
    import threading
    import types

    from topologies import cli
    from topologies.ports import free_port

    port, release = free_port(), threading.Event()
    # The hold is the command's last step: it waits for the test instead of 600 s.
    monkeypatch.setattr(cli, "time", types.SimpleNamespace(sleep=lambda _s: release.wait(600)))
    result: list = []
    command = threading.Thread(target=lambda: result.append(run_cli(
        "replay", str(ROOT / "data" / "sample.jsonl"), "--out", str(tmp_path), "--no-progress",
        "--metrics-port", str(port), "--metrics-hold", "600")), daemon=True)
    command.start()
    try:
        done = re.compile(r'^feedback_stream_events_total\{outcome="ok",type="turn"\} 3610\.0$',
                          re.M)
        text = wait_until(lambda: metrics_matching(port, done), 180,
                          "the replay's final counters on /metrics", every_s=0.1)
        assert "feedback_stream_top_defect_rate{" in text
        assert re.search(r'^feedback_stream_dead_letters_total\{reason="invalid_json"\} '
                         r'[1-9]', text, re.M)
    finally:
        release.set()
        command.join(60)
    assert [proc.returncode for proc in result] == [0], result
    assert b"serving final metrics for 600 s" in result[0].stderr


@pytest.mark.kafka
def test_worker_command_serves_and_stops_cleanly_on_sigterm(tmp_path):
    """`feedback-stream worker` with no bootstrap servers starts the embedded broker and a
    worker, logs to stderr (banner, Faust's log) and prints where to reach it; SIGTERM
    (docker stop) stops both and exits 0."""
    import signal

    from topologies.ports import free_port

    port = free_port()
    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err:  # a file, not a pipe: a full pipe would block the worker
        proc = subprocess.Popen([sys.executable, "-m", "topologies.cli", "worker", "--web-port",
                                 str(port)], stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
    try:
        def serving() -> bool:
            assert proc.poll() is None, err_path.read_text()
            return bool(scrape(port))

        wait_until(serving, 180, "the worker to serve /metrics")
        # Faust logs at info on our stderr; the banner says where everything is.
        wait_until(lambda: "Worker ready" in err_path.read_text(errors="replace"), 120,
                   "Faust's 'Worker ready' log line on stderr")
        err = err_path.read_text(errors="replace")
        for url in (f"http://127.0.0.1:{port}/metrics",
                    f"http://127.0.0.1:{port}/defect-rates?utterance=",
                    f"http://127.0.0.1:{port}/rewrites?utterance="):
            assert url in err, err[:3000]
        assert "log:      stderr" in err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        child = re.search(r"worker started \(pid (\d+)", err)
        assert child, err
        wait_until(lambda: not _pid_alive(int(child.group(1))), 30, "the Faust child to exit")
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.kafka
def test_worker_log_file_option(tmp_path):
    """--log-file sends the worker's log there and nothing of it to stderr."""
    import signal

    from topologies.ports import free_port

    port, log = free_port(), tmp_path / "worker.log"
    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "topologies.cli", "worker", "--web-port",
                                 str(port), "--log-file", str(log)], stdout=subprocess.PIPE,
                                stderr=err, cwd=ROOT)
    try:
        wait_until(lambda: log.exists() and "Worker ready" in log.read_text(errors="replace"),
                   180, "'Worker ready' in the log file")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err_path.read_text(errors="replace")
    assert f"log:      {log}" in err and "Worker ready" not in err, err

def test_demo_summary_counts_defect_rate_plays_not_records():
    """Worker and replay publish one estimate per key per batch, their batches differ: the
    demo compares the plays the last estimates count on both sides."""
    from collections import Counter

    from topologies.cli_run import demo_summary

    estimate = {"key_type": "utterance", "key": "play jazz", "defects": 1, "rate": 0.5,
                "low": 0.1, "high": 0.9, "updated_ts": 1}
    outputs = {name: [] for name in OUTPUT_STREAMS}
    outputs["defect-rates"] = [{**estimate, "plays": 2}, {**estimate, "plays": 5},
                               {**estimate, "key": "stop", "plays": 1}]
    text = demo_summary(outputs, KafkaSettings(), Counter({"defect-rates": 6}), top=3)
    assert "3  estimates of 2 keys counting 6 plays [6 plays]" in text


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- one convention for every command (exit codes: 0 ok, 1 runtime failure, 2 usage/input) ---

def _unused_port() -> int:
    from topologies.ports import free_port

    return free_port()


def test_every_option_of_every_command_has_help():
    from topologies.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}"
        assert "exit codes" in command.format_help(), name
    assert "exit codes" in parser.format_help()


def test_produce_checks_the_file_before_connecting(tmp_path):
    started = time.monotonic()
    proc = cli("produce", str(tmp_path / "nope.jsonl"), "--bootstrap-servers",
               f"127.0.0.1:{_unused_port()}", "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert b"cannot read input" in proc.stderr and b"nope.jsonl" in proc.stderr
    assert b"Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert time.monotonic() - started < 60  # no connection attempt (Python start-up only)


@pytest.mark.kafka
def test_unreachable_broker_is_a_fast_clear_error(tmp_path):
    """produce (and worker, demo with --bootstrap-servers) refuse in seconds with one line,
    instead of the clients' 30 s of retries ending in "Unable to bootstrap"."""
    bootstrap = f"127.0.0.1:{_unused_port()}"
    # The same command failing before any connection attempt: Python and import time, which
    # a loaded machine stretches to 20 s and more; the check itself must add seconds only.
    started = time.monotonic()
    assert cli("produce", str(tmp_path / "nope.jsonl"), "--bootstrap-servers",
               bootstrap).returncode == 2
    baseline = time.monotonic() - started
    for args in (("produce", str(ROOT / "data" / "sample.jsonl"), "--no-progress"),
                 ("worker",), ("demo", "--no-progress")):
        started = time.monotonic()
        proc = cli(*args, "--bootstrap-servers", bootstrap)
        took = time.monotonic() - started
        assert proc.returncode == 1, (args, proc.stderr)
        err = proc.stderr.decode()
        assert "cannot reach Kafka" in err and bootstrap in err, err
        # One error line (demo first says how many of the sample's lines are dead letters).
        assert "Traceback" not in err and err.count("error") == 1, err
        # demo first replays the sample in-process (seconds); the clients alone took 31 s.
        assert took < baseline + 20, (args, took, baseline)


@pytest.mark.parametrize("args", [
    ("replay", "data/sample.jsonl", "--top", "0"),
    ("replay", "data/sample.jsonl", "--top", "-1"),
    ("demo", "--top", "0"),
    ("worker", "--partitions", "0"),
])
def test_count_options_must_be_positive(args, tmp_path, run_cli):
    proc = run_cli(*args, "--out", str(tmp_path)) if args[0] == "replay" else run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert b"is not >= 1" in proc.stderr and b"Traceback" not in proc.stderr


def test_metrics_hold_without_metrics_port_is_a_usage_error(tmp_path, run_cli):
    proc = run_cli("replay", "data/sample.jsonl", "--out", str(tmp_path), "--metrics-hold", "5")
    assert proc.returncode == 2
    assert b"--metrics-hold needs --metrics-port" in proc.stderr
    assert not list(tmp_path.iterdir())  # refused before doing anything


def test_binary_input_is_an_input_error_and_bad_lines_are_counted(tmp_path, run_cli):
    """A file with no valid event (here: random bytes) is an input error: exit 2 with the
    dead-letter count, outputs still written for inspection. A file with some bad lines
    replays (exit 0) and says how many were dead-lettered."""
    import random

    blob = tmp_path / "blob.bin"
    rng = random.Random(7)
    blob.write_bytes(bytes(rng.randrange(256) for _ in range(20_000)))
    proc = run_cli("replay", str(blob), "--out", str(tmp_path / "o1"), "--no-progress")
    assert proc.returncode == 2, proc.stderr
    dead = (tmp_path / "o1" / "dead-letter.jsonl").read_bytes().count(b"\n")
    assert dead > 0
    err = proc.stderr.decode()
    assert f"no valid event in {blob}: all {dead} lines dead-lettered" in err, err

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(turn("a", 0, "play jazz") + b"\n\x00\xff\n{broken\n")
    proc = run_cli("replay", str(mixed), "--out", str(tmp_path / "o2"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "warning: 2 lines of" in proc.stderr.decode() and "dead-lettered" in \
        proc.stderr.decode()

    proc = run_cli("demo", "--file", str(blob), "--no-progress")  # refused before any broker
    assert proc.returncode == 2 and b"no valid event" in proc.stderr, proc.stderr


@pytest.mark.kafka
def test_faust_worker_without_bootstrap_servers_is_one_clear_line():
    env = {k: v for k, v in os.environ.items() if k != "FEEDBACK_STREAM_BOOTSTRAP_SERVERS"}
    proc = subprocess.run([sys.executable, "-m", "faust", "-A", "topologies.app", "worker",
                           "-l", "warn"], capture_output=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode != 0
    out = (proc.stdout + proc.stderr).decode()
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert errors == [errors[0]] and "FEEDBACK_STREAM_BOOTSTRAP_SERVERS is not set" in errors[0]
    assert "Traceback" not in out, out


@pytest.mark.kafka
def test_demo_removes_its_temp_files_unless_asked_to_keep_them(tmp_path):
    """The demo's broker log, worker log and Faust state live in one temp directory, removed
    after a successful run; --keep-logs keeps it and says where."""
    lines = (ROOT / "data" / "sample.jsonl").read_bytes().splitlines(keepends=True)
    small = tmp_path / "small.jsonl"
    # The first 400 events and the sample's closing watermark, which finalises the last turns
    # of every partition (without it Kafka would wait for more events: see the README).
    small.write_bytes(b"".join(lines[:400]) + lines[-1])
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.run([sys.executable, "-m", "topologies.cli", "demo", "--file", str(small),
                           "--no-progress", "--timeout", "240"], capture_output=True,
                          timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert list(tmp.iterdir()) == [], list(tmp.iterdir())
    proc = subprocess.run([sys.executable, "-m", "topologies.cli", "demo", "--file", str(small),
                           "--no-progress", "--timeout", "240", "--keep-logs"],
                          capture_output=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    (kept,) = tmp.iterdir()
    assert f"logs and state kept in {kept}" in proc.stderr.decode()
    assert {p.name for p in kept.iterdir()} >= {"broker.log", "worker.log", "state"}


@pytest.mark.parametrize("variable, value", [("FEEDBACK_STREAM_DEAD_LETTER_RAW", "bogus"),
                                             ("FEEDBACK_STREAM_REPHRASE_WINDOW_MS", "abc")])
def test_bad_setting_is_one_line_and_usage_exit_code(tmp_path, run_cli, variable, value):
    proc = run_cli("replay", str(ROOT / "data" / "sample.jsonl"), "--out", str(tmp_path),
                   env={variable: value})
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.decode()
    assert "Traceback" not in err and f"{variable}={value!r}" in err, err
    assert not list(tmp_path.iterdir()), "nothing is written when a setting is unusable"
