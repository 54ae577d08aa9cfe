"""CLI subcommands ``worker`` and ``demo`` (the main job)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stream.records import DEFECT_RATES, OUTPUT_STREAMS, REWRITE_TRIGGERS
from topologies.broker import BrokerError, EmbeddedBroker
from topologies.cli_common import EXIT_CODES, dead_letter_report, positive_int
from topologies.settings import KafkaSettings

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample.jsonl"

WORKER_HELP = """\
Run the Faust worker (same as `faust -A topologies.app worker`) with the settings below.
Without --bootstrap-servers / FEEDBACK_STREAM_BOOTSTRAP_SERVERS it starts the embedded broker
first and stops it on exit. Input and output topics are created if missing.
"""

DEMO_HELP = """\
The whole pipeline end to end on this machine: start the embedded Kafka-protocol broker (or use
--bootstrap-servers), create the topics, start a worker, replay a recorded stream into the
input topic with a progress bar, wait until every output topic holds what the in-process engine
makes of the same stream, print a summary read back from the output topics, and stop
everything.
"""


@contextlib.contextmanager
def broker_for(bootstrap: str | None, log_path: Path | None = None) -> Iterator[str]:
    """The given bootstrap servers, or an embedded broker (logging to ``log_path``, default a
    temp file) for the duration of the block."""
    if bootstrap:
        yield bootstrap
        return
    with EmbeddedBroker(log_path=log_path) as broker:
        print(f"embedded broker (tansu) listening on {broker.bootstrap}", file=sys.stderr)
        yield broker.bootstrap


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("worker", help="run the Faust stream worker",
                              description=WORKER_HELP,
                              epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap-servers", default=None, metavar="HOST:PORT[,...]",
                   help="Kafka to connect to (default: $FEEDBACK_STREAM_BOOTSTRAP_SERVERS; "
                   "empty: start the embedded broker)")
    p.add_argument("--web-port", type=int, default=None, metavar="PORT",
                   help="HTTP port for /metrics, /defect-rates and /rewrites "
                   "(default: $FEEDBACK_STREAM_WEB_PORT, 6066)")
    p.add_argument("--partitions", type=positive_int, default=None, metavar="N",
                   help="partitions of the topics it creates (default: "
                   "$FEEDBACK_STREAM_PARTITIONS, 4); existing topics keep theirs")
    p.add_argument("-l", "--loglevel", default="info",
                   choices=("debug", "info", "warn", "error", "crit"),
                   help="worker log level (default: info)")
    p.add_argument("--log-file", default=None, metavar="PATH",
                   help="append the worker's log (and Faust's banner) to PATH instead of "
                   "writing it to stderr")
    p.set_defaults(func=cmd_worker)

    p = subparsers.add_parser("demo", help="the main job: broker + worker + replay + summary",
                              description=DEMO_HELP,
                              epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", default=str(SAMPLE), metavar="FILE.jsonl",
                   help="recorded stream (default: the sample, data/sample.jsonl)")
    p.add_argument("--bootstrap-servers", default=None, metavar="HOST:PORT[,...]",
                   help="use this Kafka instead of the embedded broker")
    p.add_argument("--timeout", type=float, default=180.0, metavar="S",
                   help="seconds to wait for the outputs (default: 180)")
    p.add_argument("--top", type=positive_int, default=10, metavar="N",
                   help="defective utterances and rewrites to list (default: 10)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar on stderr while replaying into Kafka")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the broker log, worker log and Faust state (one directory in the "
                   "temp directory) and print its path; by default it is removed after a "
                   "successful run and kept after a failure")
    p.set_defaults(func=cmd_demo)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_worker(args: argparse.Namespace) -> int:
    # Imported here: Kafka I/O pulls the engine (river, scipy), which `--help` must not wait for.
    from topologies.kafka_io import KafkaIOError, check_reachable
    from topologies.runner import WorkerProcess, prepare_topics

    base = KafkaSettings.from_env(web_port=args.web_port, partitions=args.partitions)
    try:
        if args.bootstrap_servers or base.bootstrap_servers:
            check_reachable(args.bootstrap_servers or base.bootstrap_servers)
        with broker_for(args.bootstrap_servers or base.bootstrap_servers) as bootstrap:
            settings = dataclasses.replace(base, bootstrap_servers=bootstrap)
            prepare_topics(settings)
            worker = WorkerProcess(settings, log_path=args.log_file, loglevel=args.loglevel,
                                   inherit_output=args.log_file is None)
            proc = worker.start().proc
            print(worker_banner(settings, proc.pid, worker.log_path), file=sys.stderr,
                  flush=True)
            # SIGTERM (docker stop, systemd) stops as cleanly as Ctrl-C: worker, then broker.
            signal.signal(signal.SIGTERM, _interrupt)
            try:
                while worker.alive():
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
            code = worker.stop(signal.SIGTERM)
            if code not in (0, None, -signal.SIGTERM) and worker.log_path is not None:
                print(worker.log_tail(), file=sys.stderr)
            return 0 if code in (0, None, -signal.SIGTERM) else 1
    except (BrokerError, KafkaIOError) as exc:
        print(f"feedback-stream worker: error: {exc}", file=sys.stderr)
        return 1


def worker_banner(settings: KafkaSettings, pid: int, log_path: Path | None) -> str:
    """Where the worker can be reached and where its log goes."""
    web = f"http://{settings.web_bind}:{settings.web_port}"
    return "\n".join([
        f"worker started (pid {pid}); Ctrl-C stops it",
        f"  log:      {log_path if log_path is not None else 'stderr (--log-file to redirect)'}",
        f"  web:      {web}/",
        f"  metrics:  {web}/metrics",
        f"  lookups:  {web}/defect-rates?utterance=play%20jazz",
        f"            {web}/defect-rates?key_type=intent&key=PlayMusic",
        f"            {web}/rewrites?utterance=play%20jazz[&device_id=DEVICE]",
    ])


def cmd_demo(args: argparse.Namespace) -> int:
    # Imported here: the engine pulls river and scipy, which `--help` must not wait for.
    from topologies.kafka_io import KafkaIOError, check_reachable, produce_file, security_options
    from topologies.runner import (
        PipelineError,
        WorkerProcess,
        collect_outputs,
        demo_settings,
        expected_run,
        prepare_topics,
    )

    if not Path(args.file).is_file():
        print(f"feedback-stream demo: error: cannot read input {args.file}: no such file",
              file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("feedback-stream demo: error: --timeout must be > 0", file=sys.stderr)
        return 2
    started = time.monotonic()
    # The in-process run first: it is the reference, and a file with no valid event at all is
    # an input error before anything starts.
    expected, engine = expected_run(args.file, KafkaSettings.from_env())
    code, report = dead_letter_report(engine, args.file)
    if report:
        print(f"feedback-stream demo: {report}", file=sys.stderr)
    if code:
        return code
    if args.bootstrap_servers:
        try:
            check_reachable(args.bootstrap_servers)
        except KafkaIOError as exc:
            print(f"feedback-stream demo: error: {exc}", file=sys.stderr)
            return 1
    # One temp directory for the broker log, the worker log and Faust's state: removed after
    # a successful run, kept (and named) with --keep-logs or after a failure.
    workdir = Path(tempfile.mkdtemp(prefix="feedback-stream-demo-"))
    ok = False
    try:
        with broker_for(args.bootstrap_servers, log_path=workdir / "broker.log") as bootstrap:
            settings = demo_settings(bootstrap, state_dir=str(workdir / "state"))
            prepare_topics(settings)
            with WorkerProcess(settings, log_path=workdir / "worker.log") as worker:
                print(f"worker started (log {worker.log_path})", file=sys.stderr)
                # The replay it is compared with ends the stream at the end of the file.
                stats = produce_file(args.file, bootstrap, settings.input_topic,
                                     progress=not args.no_progress, end_of_stream=True,
                                     settings=settings, **security_options(settings))
                print(f"replayed {stats.lines} events into {settings.input_topic}",
                      file=sys.stderr)
                outputs = collect_outputs(settings, expected, timeout_s=args.timeout,
                                          worker=worker)
        ok = True
    except (BrokerError, KafkaIOError, PipelineError) as exc:
        print(f"feedback-stream demo: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep_logs or not ok:
            print(f"logs and state kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(demo_summary(outputs, settings, expected, args.top))
    print(f"done in {time.monotonic() - started:.1f} s")
    return 0


def demo_summary(outputs: dict[str, list[dict[str, Any]]], settings: KafkaSettings,
                 expected: Any, top: int) -> str:
    from stream.rates import DefectRateTracker, rank_defective
    from stream.replay import top_table
    from topologies.runner import plays_counted, trigger_key

    lines = ["records per output topic (read back from Kafka; in-process replay in brackets):"]
    for name in OUTPUT_STREAMS:
        count = f"[{expected.get(name, 0)}]"
        if name == DEFECT_RATES:  # one estimate per key per batch, not one per update
            keys = {(r["key_type"], r["key"]) for r in outputs[name]}
            count = (f"estimates of {len(keys)} keys counting "
                     f"{plays_counted(outputs[name])} plays [{expected.get(name, 0)} plays]")
        elif name == REWRITE_TRIGGERS:  # when the global layer publishes may differ
            decided = {trigger_key(r) for r in outputs[name]}
            count = f"deciding on {len(decided)} utterances [{expected.get(name, 0)}]"
        lines.append(f"  {settings.topic(name):<28} {len(outputs[name]):>7}  {count}")
    latest: dict[str, DefectRateTracker] = {}
    for rec in outputs[DEFECT_RATES]:
        if rec["key_type"] == "utterance":
            latest[rec["key"]] = DefectRateTracker(rec["plays"], rec["defects"],
                                                   rec["updated_ts"])
    lines.append(top_table(rank_defective(latest.items(), top)))
    current = {}
    for rec in outputs[REWRITE_TRIGGERS]:
        current[(rec["layer"], rec["device_id"], rec["utterance"])] = rec
    published = [r for r in current.values() if r["rewrite"] is not None]
    lines.append(f"rewrite triggers published: {len(published)}")
    for rec in sorted(published, key=lambda r: (r["layer"], -r["support"], r["utterance"]))[:top]:
        who = f"device {rec['device_id']}" if rec["device_id"] else "all devices"
        lines.append(f"  {rec['utterance']!r} -> {rec['rewrite']!r}  P(success) "
                     f"{rec['p_success_original']:.2f} -> {rec['p_success']:.2f}, "
                     f"support {rec['support']} ({rec['layer']}, {who})")
    return "\n".join(lines)
