"""Replay a recorded JSONL stream through the in-process engine into one JSONL file per stream."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
from tqdm import tqdm

from stream.engine import FeedbackEngine
from stream.records import OUTPUT_STREAMS, Output
from stream.settings import Settings

YOUNG_COLLECTION_EVERY = 50_000
"""Net allocations between two young-generation collections while a replay runs (Python's
default: 700)."""


@contextlib.contextmanager
def fewer_collections(threshold: int = YOUNG_COLLECTION_EVERY) -> Iterator[None]:
    """Python's young-generation threshold raised to ``threshold`` for the duration.

    The engine keeps allocating (parsed fields, turn states, output records; about seven
    more objects alive per event than freed while its state grows), so at the default
    threshold the collector ran about every 100 events and re-scanned the survivors each time:
    13% of the CPU of 100k generated events, 4% with this threshold (time inside the
    collector, ``gc.callbacks``). Cycles are still collected, ``threshold`` allocations later
    (a few MiB at most)."""
    old = gc.get_threshold()
    gc.set_threshold(threshold, *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


class ReplayError(Exception):
    """A real failure (missing input, unwritable output): exit non-zero with this message."""


def iter_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its newline) for every non-blank line."""
    for number, line in enumerate(stream, 1):
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield number, line


class OutputWriter:
    """One JSONL file per output stream in ``out_dir`` (all created, even when empty)."""

    def __init__(self, out_dir: Path) -> None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.files = {name: open(out_dir / f"{name}.jsonl", "wb")  # noqa: SIM115
                          for name in OUTPUT_STREAMS}
        except OSError as exc:
            raise ReplayError(f"cannot write to output directory {out_dir}: {exc}") from exc
        self.counts: Counter[str] = Counter()

    def write(self, outputs: list[Output]) -> None:
        for out in outputs:
            self.files[out.stream].write(orjson.dumps(out.record) + b"\n")
            self.counts[out.stream] += 1

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def replay(source: str, out_dir: str | Path, settings: Settings | None = None,
           progress: bool | None = None,
           on_progress: Callable[[FeedbackEngine], None] | None = None,
           ) -> tuple[FeedbackEngine, Counter[str]]:
    """Run the engine over ``source`` (a path or ``-`` for stdin); returns engine and counts.

    ``on_progress(engine)`` is called about every MiB of input and at the end (e.g. to export
    metrics while a long replay runs)."""
    engine = FeedbackEngine(settings)
    writer = OutputWriter(Path(out_dir))
    try:
        with _open_source(source) as (stream, total), fewer_collections():
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="replay", file=sys.stderr,
                       disable=(not progress) if progress is not None else None, leave=False)
            name = "-" if source == "-" else os.path.basename(source)
            done = 0
            for number, line in iter_lines(stream):
                writer.write(engine.process(line, {"file": name, "line": number}))
                done += len(line) + 1
                if done >= 1 << 20:
                    bar.update(done)
                    done = 0
                    if on_progress is not None:
                        on_progress(engine)
            bar.update(done)
            bar.close()
        writer.write(engine.flush())
        if on_progress is not None:
            on_progress(engine)
    finally:
        writer.close()
    return engine, writer.counts


@contextlib.contextmanager
def _open_source(source: str) -> Iterator[tuple[IO[bytes], int | None]]:
    if source == "-":
        yield sys.stdin.buffer, None
        return
    try:
        f = open(source, "rb")  # noqa: SIM115
    except OSError as exc:
        raise ReplayError(f"cannot read input {source}: {exc.strerror}") from exc
    with f:
        yield f, os.fstat(f.fileno()).st_size


def summary(engine: FeedbackEngine, counts: Counter[str], top: int = 10) -> str:
    """Human summary: counts per stream and the most defective utterances."""
    st = engine.stats
    ok = sum(v for (_, outcome), v in st.events.items() if outcome == "ok")
    dup = sum(v for (_, outcome), v in st.events.items() if outcome == "duplicate")
    lines = [f"events: {ok} processed, {sum(st.dead_letters.values())} dead-lettered, "
             f"{dup} duplicates dropped"]
    lines += [f"  {name:<18} {counts.get(name, 0):>8}" for name in OUTPUT_STREAMS]
    lines.append(top_table(engine.stage2.top_defective(top)))
    return "\n".join(lines)


def top_table(items: list[tuple[str, Any]]) -> str:
    if not items:
        return "no utterance has enough plays for a defect-rate ranking yet"
    rows = ["top defective utterances (>= 5 plays):",
            f"  {'rate':>6} {'95% interval':>15} {'plays':>6}  utterance"]
    for key, t in items:
        low, high = t.interval()
        rows.append(f"  {t.get():6.2f} {f'[{low:.2f}, {high:.2f}]':>15} {t.plays:>6}  {key}")
    return "\n".join(rows)
