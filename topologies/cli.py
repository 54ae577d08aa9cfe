"""``feedback-stream`` command line: replay, broker, produce, worker, demo."""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import TYPE_CHECKING

from stream.settings import SettingsError
from topologies.cli_common import EXIT_CODES, dead_letter_report, positive_int
from topologies.settings import KafkaSettings

if TYPE_CHECKING:  # the engine pulls river and scipy: `--help` must not wait for them
    from stream.engine import FeedbackEngine

SETTINGS_HELP = EXIT_CODES + "\n\nsettings (environment variables, default):\n" + "\n".join(
    f"  {name:<42} {default!r}" for name, _, default in KafkaSettings.describe()
)


def _replay(args: argparse.Namespace) -> int:
    if args.metrics_port is None and args.metrics_hold:
        print("feedback-stream replay: error: --metrics-hold needs --metrics-port",
              file=sys.stderr)
        return 2
    if args.metrics_hold < 0:
        print("feedback-stream replay: error: --metrics-hold must be >= 0", file=sys.stderr)
        return 2
    settings = KafkaSettings.from_env()
    # The engine (river, scipy: ~1 s) loads only once the command line and settings are valid.
    from stream.replay import ReplayError, replay, summary

    on_progress, server = None, None
    if args.metrics_port is not None:
        from topologies.metrics import PipelineMetrics

        metrics = PipelineMetrics(top_k=settings.top_k)
        try:
            server = metrics.start_http_server(args.metrics_port, addr=settings.web_bind)
        except OSError as exc:
            print(f"feedback-stream replay: error: cannot serve metrics on "
                  f"{settings.web_bind}:{args.metrics_port}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"metrics on http://{settings.web_bind}:{server.server_port}/metrics",
              file=sys.stderr)

        def on_progress(engine: FeedbackEngine) -> None:
            metrics.sync_stats(engine.stats)
            metrics.set_state_sizes(len(engine.stage1.devices.devices),
                                    {k: len(t) for k, t in engine.stage2.trackers.items()}, 0)
            metrics.set_top_defects([(key, t.get(), t.plays) for key, t in
                                     engine.stage2.top_defective(settings.top_k)])
    try:
        gc.freeze()  # start-up objects out of every full collection (~-5% in process)
        engine, counts = replay(args.file, args.out, settings,
                                progress=False if args.no_progress else None,
                                on_progress=on_progress)
        print(summary(engine, counts, top=args.top))
        print(f"outputs written to {args.out}/")
        code, report = dead_letter_report(engine, args.file)
        if report:
            print(f"feedback-stream replay: {report}; see {args.out}/dead-letter.jsonl",
                  file=sys.stderr)
        if code:
            return code
        if server is not None and args.metrics_hold > 0:
            print(f"serving final metrics for {args.metrics_hold:.0f} s", file=sys.stderr)
            time.sleep(args.metrics_hold)
    except ReplayError as exc:
        print(f"feedback-stream replay: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feedback-stream",
        description="Streaming implicit-feedback processor for voice assistants.",
        epilog=SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rp = sub.add_parser(
        "replay", help="run the engine in-process over a recorded JSONL stream (no broker)",
        description="Replay a recorded stream (one JSON event per line) through the engine and "
        "write one JSONL file per output stream into --out. Malformed lines go to "
        "dead-letter.jsonl with a reason and a warning on stderr counts them; an input with no "
        "valid event at all is an input error (exit 2).",
        epilog=SETTINGS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rp.add_argument("file", help="JSONL input file, or - for standard input")
    rp.add_argument("--out", default="out", help="output directory (default: out)")
    rp.add_argument("--top", type=positive_int, default=10, metavar="N",
                    help="defective utterances to list (default: 10)")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    rp.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                    help="serve Prometheus metrics on this port while replaying (0: any free "
                    "port; bound to FEEDBACK_STREAM_WEB_BIND)")
    rp.add_argument("--metrics-hold", type=float, default=0.0, metavar="S",
                    help="keep serving the final metrics for S seconds after the replay")
    rp.set_defaults(func=_replay)
    try:
        from topologies import cli_kafka
    except ImportError:  # pragma: no cover - only while the Kafka CLI is not installed
        cli_kafka = None
    if cli_kafka is not None:
        cli_kafka.register(sub)
    from topologies import cli_run

    cli_run.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:  # a bad FEEDBACK_STREAM_* value: one line, usage exit code
        print(f"feedback-stream: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
