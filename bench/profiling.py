"""Where the core's time goes: cProfile (deterministic, inflates small calls) and py-spy
(sampling, low overhead, needs ``pip install py-spy``), both grouped into the same stages.

Grouping: a function of ``stream/`` belongs to a stage by module and name (``STAGE_OF``);
anything else (builtins, orjson, numpy, rapidfuzz, river, ``stream.records`` helpers) is charged
to the stage of its caller, in proportion to the time each caller spent in it (cProfile keeps
that per call edge). py-spy samples are charged to their innermost ``stream/`` frame.

``python -m bench.profiling child EVENTS.jsonl`` is the process py-spy samples.
"""

from __future__ import annotations

import cProfile
import gc
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARSING = "parsing/validation"
DEVICE = "device stage"
REPHRASE = "rephrase scoring"
RATES = "rate estimators (+drift)"
REWRITES = "rewrite mining"
RECORDS = "output record building"
DISPATCH = "engine dispatch"
OTHER = "other"
STAGES = (PARSING, DEVICE, REPHRASE, RATES, REWRITES, RECORDS, DISPATCH, OTHER)

# Functions whose main work is building output dicts (they also do a little stage logic).
_RECORD_BUILDERS = {
    ("devices", "_finalize"), ("detectors", "teachable_moment"), ("rates", "estimate_output"),
    ("schema", "raw_field"),
}
# stream.detectors holds every implicit signal; only the rephrase search is "rephrase scoring".
_DEVICE_DETECTORS = {"on_turn", "_record", "mark", "emit", "teachable", "barge_in_source",
                     "prev", "later"}
_BY_MODULE = {
    "schema": PARSING, "devices": DEVICE, "session": DEVICE, "failure": DEVICE,
    "detectors": REPHRASE, "rates": RATES, "drift": RATES, "rewrites": REWRITES,
    "rewrite_layers": REWRITES,
    "engine": DISPATCH, "records": RECORDS,
}
_TEXT = {"similarity": REPHRASE, "_phonetic_tokens": REPHRASE, "_jaccard": REPHRASE,
         "is_stop_phrase": DEVICE}


def stage_of(path: str, func: str) -> str | None:
    """The stage a function belongs to, or None: charge it to its caller."""
    if path == "<string>" and func in ("<lambda>", "__new__"):
        return RECORDS  # NamedTuple.__new__: the ``Output`` envelope
    parts = Path(path).parts
    # cProfile gives absolute paths, py-spy relative ones; river has a "stream" package too.
    if len(parts) < 2 or parts[-2] != "stream" or "site-packages" in parts:
        return None
    module = Path(path).stem
    func = func.rsplit(".", 1)[-1]  # py-spy reports qualified names ("DeviceStage._finalize")
    if (module, func) in _RECORD_BUILDERS:
        return RECORDS
    if module == "text":
        return _TEXT.get(func)  # normalize: parsing or device stage, by caller
    if module == "detectors" and func in _DEVICE_DETECTORS:
        return DEVICE
    return _BY_MODULE.get(module)


# --------------------------------------------------------------------------------------------
# ablation: cumulative subsets of the pipeline over the same events (no profiler bias)
# --------------------------------------------------------------------------------------------
ABLATION = ("parse only", "+ device stage (stage 1)", "+ rate estimators (stage 2)",
            "+ rewrite mining (full engine)", "full engine, gc disabled")


def ablation(lines: list[bytes]) -> dict[str, Any]:
    """CPU seconds of each cumulative subset; increments are each stage's own cost.

    Stage 2 without rewrite mining is the full engine with its rewrite layers stubbed out on
    that one instance (benchmark only). "gc disabled" shows what cyclic garbage collection
    costs: its passes scan the whole heap, which grows with the tracked state.
    """
    from stream.engine import DeviceEngine, FeedbackEngine
    from stream.schema import Parser

    def parse_only() -> None:
        parse = Parser().parse
        for line in lines:
            parse(line)

    def stage1() -> None:
        eng = DeviceEngine(emit_chains=True)
        # As in the full engine: finalised turns go to stage 2 directly, not as records.
        eng.devices.rate_sink = lambda keys, defective, ts: []
        for line in lines:
            eng.process(line)
        eng.flush()

    def engine(mine: bool) -> None:
        eng = FeedbackEngine()
        if not mine:
            eng.rewrites.learn_one = lambda chain: []  # type: ignore[method-assign]
        for line in lines:
            eng.process(line)
        eng.flush()

    def no_gc() -> None:
        gc.disable()
        try:
            engine(True)
        finally:
            gc.enable()

    runs = (parse_only, stage1, lambda: engine(False), lambda: engine(True), no_gc)
    cpu: dict[str, float] = {}
    for name, fn in zip(ABLATION, runs, strict=True):
        gc.collect()
        c0 = time.process_time()
        fn()
        cpu[name] = time.process_time() - c0
    full = cpu[ABLATION[3]]
    steps = [cpu[ABLATION[0]]] + [cpu[ABLATION[i]] - cpu[ABLATION[i - 1]] for i in (1, 2, 3)]
    per_event = {name: 1e6 * step / len(lines) for name, step in zip(ABLATION, steps,
                                                                      strict=False)}
    return {"events": len(lines), "cpu_s": cpu, "us_per_event": per_event,
            "shares": {name: step / full for name, step in zip(ABLATION, steps, strict=False)},
            "gc_share": (full - cpu[ABLATION[4]]) / full}


# --------------------------------------------------------------------------------------------
# cProfile
# --------------------------------------------------------------------------------------------
def group_cprofile(stats: pstats.Stats, top: int = 25) -> dict[str, Any]:
    raw: dict[tuple[str, int, str], tuple] = stats.stats  # type: ignore[attr-defined]
    memo: dict[tuple[str, int, str], dict[str, float]] = {}

    def shares(fn: tuple[str, int, str], depth: int = 0) -> dict[str, float]:
        """Fractions of ``fn``'s own time per stage."""
        if fn in memo:
            return memo[fn]
        own = stage_of(fn[0], fn[2])
        if own is not None:
            memo[fn] = {own: 1.0}
            return memo[fn]
        callers = raw[fn][4] if fn in raw else {}
        total = sum(edge[2] for edge in callers.values())
        if depth > 20 or not callers or total <= 0:
            memo[fn] = {OTHER: 1.0}
            return memo[fn]
        memo[fn] = {OTHER: 1.0}  # cycle guard while resolving
        mix: Counter[str] = Counter()
        for caller, edge in callers.items():
            for stage, frac in shares(caller, depth + 1).items():
                mix[stage] += frac * edge[2] / total
        memo[fn] = dict(mix)
        return memo[fn]

    by_stage: Counter[str] = Counter()
    rows = []
    for fn, (_cc, calls, tottime, cumtime, _callers) in raw.items():
        for stage, frac in shares(fn).items():
            by_stage[stage] += tottime * frac
        rows.append((tottime, calls, cumtime, fn))
    total = sum(by_stage.values()) or 1.0
    rows.sort(reverse=True)
    return {
        "total_s": total,
        "stages": {s: round(by_stage.get(s, 0.0) / total, 4) for s in STAGES},
        "top": [{"function": _name(fn), "stage": _dominant(shares(fn)), "calls": calls,
                 "tottime_s": round(tt, 3), "cumtime_s": round(ct, 3),
                 "share": round(tt / total, 4)} for tt, calls, ct, fn in rows[:top]],
    }


def _dominant(mix: dict[str, float]) -> str:
    return max(mix.items(), key=lambda kv: kv[1])[0]


def _name(fn: tuple[str, int, str]) -> str:
    path, line, func = fn
    if path == "~":
        return func  # builtins: "{method 'get' of 'dict' objects}"
    return f"{'/'.join(Path(path).parts[-2:])}:{line}({func})"


def cprofile_engine(lines: list[bytes]) -> dict[str, Any]:
    """Run a fresh ``FeedbackEngine`` over ``lines`` under cProfile; stages and top functions."""
    from stream.engine import FeedbackEngine

    engine = FeedbackEngine()
    profiler = cProfile.Profile()
    profiler.enable()
    for line in lines:
        engine.process(line)
    engine.flush()
    profiler.disable()
    return group_cprofile(pstats.Stats(profiler))


# --------------------------------------------------------------------------------------------
# py-spy
# --------------------------------------------------------------------------------------------
def _parse_frame(frame: str) -> tuple[str, str]:
    # "func (path:line)"
    func, _, rest = frame.rpartition(" (")
    path = rest.rstrip(")").rsplit(":", 1)[0]
    return func, path


def _is_engine_call(frame: str) -> bool:
    func, path = _parse_frame(frame)
    return func in ("FeedbackEngine.process", "FeedbackEngine.flush", "process", "flush") and (
        Path(path).parts[-2:] == ("stream", "engine.py"))


def collapsed_stacks(raw_text: str) -> Iterator[tuple[list[str], int]]:
    """(frames root first, sample count) of each line of py-spy's collapsed (``--raw``) output."""
    for line in raw_text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack.split(";"), int(count_text)


def group_pyspy(raw_text: str, top: int = 25) -> dict[str, Any]:
    by_stage: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    total = 0
    for frames, count in collapsed_stacks(raw_text):
        # Only the engine's work: reading the input and imports are left out.
        if not any(_is_engine_call(f) for f in frames):
            continue
        total += count
        stage = OTHER
        for frame in reversed(frames):
            func, path = _parse_frame(frame)
            found = stage_of(path, func)
            if found is not None:
                stage = found
                break
        by_stage[stage] += count
        func, path = _parse_frame(frames[-1])
        by_leaf[f"{'/'.join(Path(path).parts[-2:])}({func})"] += count
    denom = total or 1
    return {
        "samples": total,
        "stages": {s: round(by_stage.get(s, 0) / denom, 4) for s in STAGES},
        "top": [{"function": name, "self_share": round(n / denom, 4)}
                for name, n in by_leaf.most_common(top)],
    }


def pyspy_engine(lines: list[bytes], rate_hz: int = 200) -> dict[str, Any]:
    """Sample a child process running the engine over ``lines`` with py-spy;
    ``{"skipped": why}`` when py-spy is not installed or cannot attach."""
    binary = shutil.which("py-spy")
    if binary is None:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    with tempfile.TemporaryDirectory(prefix="bench-pyspy-") as tmp:
        out, data = Path(tmp) / "raw.txt", Path(tmp) / "events.jsonl"
        data.write_bytes(b"\n".join(lines) + b"\n")
        cmd = [binary, "record", "-r", str(rate_hz), "-f", "raw", "-o", str(out),
               "--nonblocking", "--", sys.executable, "-m", "bench.profiling", "child",
               str(data)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            return {"skipped": f"py-spy failed ({proc.returncode}): {proc.stderr[-500:]}"}
        return group_pyspy(out.read_text())


# --------------------------------------------------------------------------------------------
# py-spy on a running worker process
# --------------------------------------------------------------------------------------------
class Sampler:
    """py-spy attached to a running process until ``stop()`` (SIGINT makes it write)."""

    def __init__(self, pid: int, rate_hz: int = 100) -> None:
        self.binary = shutil.which("py-spy")
        self.dir = tempfile.mkdtemp(prefix="bench-pyspy-")
        self.out = Path(self.dir) / "raw.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        if self.binary is not None:
            self.proc = subprocess.Popen(
                [self.binary, "record", "--pid", str(pid), "-r", str(rate_hz), "-f", "raw",
                 "-o", str(self.out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> str | None:
        """The raw samples, or None when py-spy is missing or wrote nothing."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        text = self.out.read_text() if self.out.exists() else None
        shutil.rmtree(self.dir, ignore_errors=True)
        return text


_WORKER_PARTS = {"topologies": None, "faust": "faust", "mode": "faust", "aiokafka": "aiokafka",
                 "kafka": "aiokafka", "logging": "logging", "asyncio": "asyncio event loop",
                 "orjson": None}
_PROCESSORS = "topologies: batch processors + table writes"
_TOPOLOGY_FILES = {"publisher.py": "topologies: output publisher",
                   "app.py": "topologies: agent loop + metrics",
                   "metrics.py": "topologies: agent loop + metrics"}


def worker_category(frames: list[str]) -> str:
    """What a worker sample was doing: waiting, a core stage, or which layer of the stack."""
    func, path = _parse_frame(frames[-1])
    if func.endswith(".select") and "selectors" in path:
        return "idle (waiting in select)"
    for frame in reversed(frames):
        func, path = _parse_frame(frame)
        stage = stage_of(path, func)
        if stage is not None:
            return f"core: {stage}"
        parts = Path(path).parts
        if len(parts) >= 3 and parts[-3:-1] == ("topologies", "processors"):
            return _PROCESSORS
        if len(parts) >= 2 and parts[-2] == "topologies":
            return _TOPOLOGY_FILES.get(parts[-1], "topologies: other")
        for part in parts[:-1]:
            if part in _WORKER_PARTS and _WORKER_PARTS[part]:
                return _WORKER_PARTS[part]
        if parts and parts[-1] in ("selector_events.py", "base_events.py", "events.py",
                                   "tasks.py", "futures.py", "timeouts.py"):
            return "asyncio event loop"
    return "other"


# Inclusive views: samples with any of these functions on the stack. py-spy shows each asyncio
# task's own stack, so work done in callbacks and other tasks (futures completing, the
# producer's sender task) is not under the agent that caused it.
WORKER_MARKERS = {
    "stage 1 agent (detect)": ("detect",),
    "stage 2 agent (estimate)": ("estimate",),
    "global rewrite agent (mine)": ("mine",),
    "output publisher (send + await acks)": ("OutputPublisher.publish",),
    "produce futures completing": ("MessageBatch.done",),
    "aiokafka sender task": ("Sender._sender_routine",),
    "Faust changelog writes": ("Table.on_key_set", "ProducerBuffer._handle_pending"),
    "Faust consumer fetch/drain": ("Consumer._drain_messages", "Fetcher._fetcher",
                                   "AIOKafkaConsumerThread._fetch_records"),
    "debug log records (Logger.debug)": ("Logger.debug",),
}


def group_worker(raw_text: str, top: int = 12) -> dict[str, Any]:
    by_cat: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in collapsed_stacks(raw_text):
        total += count
        by_cat[worker_category(frames)] += count
        funcs = {_parse_frame(f)[0] for f in frames}
        for label, names in WORKER_MARKERS.items():
            if funcs.intersection(names):
                inclusive[label] += count
    denom = total or 1
    return {"samples": total,
            "shares": {k: round(v / denom, 4) for k, v in by_cat.most_common(top)},
            "inclusive": {k: round(inclusive.get(k, 0) / denom, 4) for k in WORKER_MARKERS}}


def _child(path: str) -> None:
    from stream.engine import FeedbackEngine

    lines = Path(path).read_bytes().split(b"\n")[:-1]
    engine = FeedbackEngine()
    for line in lines:
        engine.process(line)
    engine.flush()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        _child(sys.argv[2])
    else:
        sys.exit("usage: python -m bench.profiling child EVENTS.jsonl")
