"""python -m bench [--quick] [BENCHMARK ...]: run benchmarks, print tables, write JSON results."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    Options,
    Row,
    format_table,
    git_state,
    log,
    machine,
    write_result,
)

BENCHMARKS = {
    "core": "in-process events/s of FeedbackEngine.process vs a bare orjson.loads loop, "
            "with a cProfile / py-spy breakdown by stage",
    "kafka": "end-to-end events/s through the Faust worker vs a bare aiokafka getmany + "
             "orjson loop on the same topic; event-to-output latency p50/p99 at fixed rates",
    "scaling": "1 vs 2 worker processes in one consumer group; core cost per event as "
               "tracked devices / utterances grow 10x and 100x",
    "memory": "RSS per tracked utterance and per tracked device at 10k / 100k / 1M "
              "(fresh subprocess per size)",
    "accuracy": "per-signal precision/recall, failure-point confusion, rewrites found and "
                "defect-rate error on the real-phrasings population (both splits) and a "
                "synthetic one, against their ground truth",
    "rewrite": "absorbing-chain solve time vs neighbourhood size (sparse, dense) and a full "
               "refresh of 100k utterances",
}

DESCRIPTION = """\
Benchmarks of feedback-stream on this machine. Each prints a table and writes
bench/results/<name>.json (gitignored). Every figure is a ratio against a baseline measured in
the same run (absolute numbers alongside), because the machine is shared and noisy.

benchmarks:
""" + "\n".join(f"  {name:<8} {text}" for name, text in BENCHMARKS.items()) + """

Default sizes take ~15 minutes in total; --quick runs small sizes (~2 minutes) as a smoke
test. Progress goes to stderr, tables to stdout.
"""


def parse_args(argv: list[str] | None) -> tuple[list[str], Options]:
    ap = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benchmarks", nargs="*", metavar="BENCHMARK",
                    help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="small sizes: a fast smoke run")
    ap.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR,
                    help="directory for <name>.json (default bench/results)")
    ap.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--no-pyspy", action="store_true",
                    help="skip the py-spy profile even if py-spy is installed")
    ap.add_argument("--core-events", type=int, help="core: events (default 1M; quick 50k)")
    ap.add_argument("--kafka-events", type=int,
                    help="kafka/scaling: events pre-loaded for throughput (default 40k / 15k)")
    ap.add_argument("--latency-rates", type=lambda s: tuple(int(v) for v in s.split(",")),
                    help="kafka: offered rates in events/s, comma-separated (default: half the "
                         "measured worker throughput, 2000, 5000; quick 5000)")
    ap.add_argument("--latency-seconds", type=float,
                    help="kafka: seconds of offered load per rate (default 4; quick 2)")
    ap.add_argument("--memory-sizes", type=lambda s: tuple(int(v) for v in s.split(",")),
                    help="memory: sizes, comma-separated (default 10000,100000,1000000)")
    args = ap.parse_args(argv)
    unknown = [b for b in args.benchmarks if b not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    opts = Options(quick=args.quick, seed=args.seed, progress=not args.no_progress,
                   out_dir=args.out, core_events=args.core_events,
                   kafka_events=args.kafka_events, latency_rates=args.latency_rates,
                   latency_seconds=args.latency_seconds, memory_sizes=args.memory_sizes,
                   pyspy=not args.no_pyspy)
    return args.benchmarks or list(BENCHMARKS), opts


def main(argv: list[str] | None = None) -> int:
    names, opts = parse_args(argv)
    info = machine()
    log(f"{info['nproc']} cores ({info['cpu_model']}), {info['mem_total_gib']} GiB, "
        f"load {info['loadavg']}, Python {info['python']}; running {', '.join(names)}"
        f"{' (quick)' if opts.quick else ''}")
    all_rows: list[Row] = []
    failed: list[str] = []
    started_all = time.monotonic()
    for name in names:
        started, git = time.monotonic(), git_state()
        log(f"== {name} (commit {git['commit']}"
            f"{', uncommitted changes in stream/ or topologies/' if git['uncommitted'] else ''}"
            f") ==")
        try:
            module = importlib.import_module(f"bench.{name}")
            params, results, rows = module.run(opts)
        except Exception:  # one broken benchmark should not hide the others' numbers
            traceback.print_exc()
            failed.append(name)
            continue
        path = write_result(opts, name, params, results, rows, started, git)
        print(f"\n## {name} ({time.monotonic() - started:.0f} s)\n{format_table(rows)}\n",
              flush=True)
        log(f"{name}: wrote {path}")
        all_rows += rows
    if len(names) > 1 and all_rows:
        print(f"## all ({time.monotonic() - started_all:.0f} s)\n"
              f"{format_table(all_rows, markdown=True)}", flush=True)
    if failed:
        log(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
