"""Run the pipeline end to end: worker processes, topic setup, replay in, read results back.

Used by ``feedback-stream worker`` / ``demo`` and by the integration tests, so the demo and the
tests exercise the same code path.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from stream.engine import FeedbackEngine
from stream.records import (
    CHAINS,
    DEFECT_RATES,
    OUTPUT_STREAMS,
    RATE_UPDATES,
    REWRITE_TRIGGERS,
    Output,
)
from stream.replay import iter_lines
from stream.settings import ENV_PREFIX
from topologies.kafka_io import create_topics, read_topic, security_options
from topologies.ports import free_port
from topologies.settings import KafkaSettings


class PipelineError(RuntimeError):
    """The pipeline did not produce what was expected; the message says what and where."""


def settings_env(settings: KafkaSettings) -> dict[str, str]:
    """The environment that makes a worker process see ``settings``."""
    return {ENV_PREFIX + f.name.upper(): str(getattr(settings, f.name))
            for f in dataclasses.fields(settings)}


class WorkerProcess:
    """One Faust worker (``faust -A topologies.app worker``) as a child process."""

    def __init__(self, settings: KafkaSettings, log_path: str | Path | None = None,
                 loglevel: str = "warn", inherit_output: bool = False) -> None:
        """``log_path``: the worker's output goes there (default: a new file in the temp
        directory); ``inherit_output``: it goes to this process's stdout/stderr instead (an
        operator's terminal), and there is no log file."""
        self.settings = settings
        self.inherit_output = inherit_output
        self.log_path: Path | None = None
        if not inherit_output:
            self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(
                prefix="feedback-stream-worker-", suffix=".log")[1])
        self.loglevel = loglevel
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, **settings_env(self.settings)}
        command = [sys.executable, "-m", "faust", "-A", "topologies.app", "worker",
                   "-l", self.loglevel]
        if self.log_path is None:
            # Faust prints its banner on stdout and logs on stderr: both are logs here.
            self.proc = subprocess.Popen(command, env=env, stdout=sys.stderr,
                                         start_new_session=True)
            return self
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def dump_stacks(self, wait_s: float = 1.0) -> None:
        """Ask the worker to write where its tasks wait into its log
        (``topologies.diagnostics``)."""
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGUSR1)
            time.sleep(wait_s)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return "(worker output went to the terminal)"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int | None:
        """Stop (SIGTERM: graceful; SIGKILL: crash) and wait; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def topic_layout(settings: KafkaSettings) -> tuple[dict[str, int], set[str]]:
    """Topics to create (name -> partitions) and which of them are compacted."""
    n = settings.partitions
    topics = {settings.input_topic: n, settings.topic(RATE_UPDATES): n,
              settings.topic(CHAINS): 1}
    topics.update({settings.topic(name): n for name in OUTPUT_STREAMS})
    return topics, {settings.topic(DEFECT_RATES), settings.topic(REWRITE_TRIGGERS)}


def prepare_topics(settings: KafkaSettings) -> None:
    topics, compacted = topic_layout(settings)
    create_topics(settings.bootstrap_servers, topics, compacted=compacted,
                  **security_options(settings))


def trigger_key(record: dict[str, Any]) -> tuple[str, str | None, str]:
    """What a ``rewrite-triggers`` record decides about: (layer, device id, utterance)."""
    return record["layer"], record["device_id"], record["utterance"]


def expected_counts(path: str | Path, settings: KafkaSettings) -> Counter[str]:
    """Records per output stream that the in-process engine makes of ``path``; for
    ``rewrite-triggers`` the number of (layer, device, utterance) decided about, since the
    global layer sees chains in another order in Kafka and may publish a rewrite at other
    moments (and so another number of times); for ``defect-rates`` the plays its last
    estimate per key counts (both publish one per changed key per batch, their batches
    differ)."""
    return expected_run(path, settings)[0]


def expected_run(path: str | Path,
                 settings: KafkaSettings) -> tuple[Counter[str], FeedbackEngine]:
    """``expected_counts`` and the engine that made them (its stats count dead letters)."""
    engine = FeedbackEngine(settings)
    records: dict[str, list[dict[str, Any]]] = {}

    def collect(outputs: list[Output]) -> None:
        for o in outputs:
            records.setdefault(o.stream, []).append(o.record)

    with open(path, "rb") as f:
        for number, line in iter_lines(f):
            collect(engine.process(line, {"line": number}))
    collect(engine.flush())
    return counts_to_collect(records), engine


def counts_to_collect(records: Mapping[str, list[dict[str, Any]]]) -> Counter[str]:
    """What ``collect_outputs`` waits for, given the in-process engine's ``records`` per
    stream: the number of records, except ``rewrite-triggers`` (the (layer, device, utterance)
    decided about) and ``defect-rates`` (the plays of the last estimate per key), see
    ``expected_counts``. (The number of ``defect-rates`` records is no count to wait for: it
    is far below the plays, so a reader would stop while estimates are still coming.)"""
    counts: Counter[str] = Counter({name: len(recs) for name, recs in records.items()})
    counts[REWRITE_TRIGGERS] = len({trigger_key(r) for r in records.get(REWRITE_TRIGGERS, [])})
    counts[DEFECT_RATES] = plays_counted(records.get(DEFECT_RATES, []))
    return counts


def collect_outputs(settings: KafkaSettings, expected: Counter[str], timeout_s: float = 120.0,
                    idle_s: float = 3.0, worker: WorkerProcess | None = None,
                    ) -> dict[str, list[dict[str, Any]]]:
    """Read every output topic until it holds at least the expected number of distinct
    records (at-least-once delivery repeats records: counting repeats would stop early, before
    the last records arrived).

    ``rewrite-triggers`` counts the (layer, device, utterance) decided about (see
    ``expected_counts``). ``defect-rates`` is compacted and published per key per batch (the
    worker's and the replay's batches differ): there the expected count (the plays of the
    replay's last estimates) is compared with the sum of ``plays`` over the last record of
    each key, i.e. the topic is complete once every update is counted.

    Fails with the worker's log tail if the worker died or no new record arrived for
    ``timeout_s`` (a slow machine only makes the wait longer, up to ``5 * timeout_s`` in all;
    a stuck worker fails after ``timeout_s``).
    """
    started = time.monotonic()
    deadline = started + timeout_s
    results: dict[str, list[dict[str, Any]]] = {}
    for name in OUTPUT_STREAMS:
        want = expected.get(name, 0)
        counted_by_key = name in (DEFECT_RATES, REWRITE_TRIGGERS)
        read_up_to: int | None = None if counted_by_key else want or None
        best = -1
        while True:
            if worker is not None and not worker.alive():
                raise PipelineError(f"worker exited with {worker.proc.returncode}:\n"
                                    f"{worker.log_tail()}")
            values = read_records(settings, name, timeout_s=idle_s, expected=read_up_to)
            if name == DEFECT_RATES:
                got = plays_counted(values)
            elif name == REWRITE_TRIGGERS:
                got = len({trigger_key(v) for v in values})
            else:
                got = len({orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values})
                if got < len(values):
                    read_up_to = None  # repeats: read until the topic goes quiet instead
            if got >= want:
                break
            now = time.monotonic()
            if got > best:  # progress: the worker is slow, not stuck
                best = got
                deadline = max(deadline, min(now + timeout_s, started + 5 * timeout_s))
            if now > deadline:
                tail = ""
                if worker is not None:
                    worker.dump_stacks()
                    tail = worker.log_tail(400)
                what = "plays counted" if name == DEFECT_RATES else "records"
                raise PipelineError(f"{settings.topic(name)}: {got} of {want} {what} "
                                    f"after {now - started:.0f} s, none new for "
                                    f"{timeout_s:.0f} s\n{tail}")
        results[name] = values
    return results


def read_records(settings: KafkaSettings, stream: str, timeout_s: float,
                 expected: int | None = None, max_s: float | None = None) -> list[dict[str, Any]]:
    """The records of an output stream's topic, decoded (see ``read_topic`` for when it
    stops); tombstones are left out."""
    records = read_topic(settings.bootstrap_servers, settings.topic(stream),
                         timeout_s=timeout_s, expected=expected, max_s=max_s,
                         **security_options(settings))
    return [orjson.loads(r.value) for r in records if r.value is not None]


def plays_counted(defect_rates: list[dict[str, Any]]) -> int:
    """Updates counted by the last ``defect-rates`` record of each key."""
    last = {(r["key_type"], r["key"]): r["plays"] for r in defect_rates}
    return sum(last.values())


def demo_settings(bootstrap: str, **overrides: Any) -> KafkaSettings:
    base = KafkaSettings.from_env()
    web_port = overrides.pop("web_port", None) or free_port()
    state_dir = overrides.pop("state_dir", None) or tempfile.mkdtemp(prefix="feedback-stream-")
    return dataclasses.replace(base, bootstrap_servers=bootstrap, web_port=web_port,
                               state_dir=state_dir, **overrides)
