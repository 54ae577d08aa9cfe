"""python -m stream.datasets.phrasings: write a real-phrasings population and its truth."""

from __future__ import annotations

import argparse
import sys

from stream.datasets.phrasings import SPLITS, write


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m stream.datasets.phrasings",
        description="Generate an interaction stream (schema v1) from real crowd-sourced "
                    "phrasings (CLINC150, CC BY 3.0) and its ground truth.")
    ap.add_argument("--events", type=int, default=40_000, help="at least this many events")
    ap.add_argument("--devices", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=SPLITS, default="all",
                    help="phrasings of split a or b only (tune on one, check on the other)")
    ap.add_argument("--no-final-watermark", action="store_true")
    ap.add_argument("--out", default="-", help="events JSONL (default: stdout)")
    ap.add_argument("--truth", default=None, help="ground-truth JSONL (default: not written)")
    a = ap.parse_args(argv)
    counts = write(a.out, a.truth, n_events=a.events, n_devices=a.devices, seed=a.seed,
                   split=a.split, final_watermark=not a.no_final_watermark)
    width = max(map(len, counts))
    for key, value in counts.items():
        print(f"{key:<{width}}  {value}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
