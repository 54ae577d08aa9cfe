"""``feedback-stream`` command line: replay, broker, produce, worker, demo."""

from __future__ import annotations

import argparse
import sys

from stream.settings import Settings

SETTINGS_HELP = "settings (environment variables, default):\n" + "\n".join(
    f"  {name:<42} {default!r}" for name, _, default in Settings.describe()
)


def _replay(args: argparse.Namespace) -> int:
    from stream.replay import ReplayError, replay, summary

    try:
        engine, counts = replay(args.file, args.out, Settings.from_env(),
                                progress=False if args.no_progress else None)
    except ReplayError as exc:
        print(f"feedback-stream replay: error: {exc}", file=sys.stderr)
        return 2
    print(summary(engine, counts, top=args.top))
    print(f"outputs written to {args.out}/")
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
        "dead-letter.jsonl with a reason; the exit code is 0 unless the input cannot be read or "
        "the output directory cannot be written.",
        epilog=SETTINGS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rp.add_argument("file", help="JSONL input file, or - for standard input")
    rp.add_argument("--out", default="out", help="output directory (default: out)")
    rp.add_argument("--top", type=int, default=10, help="defective utterances to list")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
