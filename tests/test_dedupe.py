"""Re-delivery: the rotating Bloom filter on its own, and a stream delivered twice through the
in-process engine (every output equal to one delivery)."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from stream.dedupe import SeenFilter, fingerprint
from stream.engine import FeedbackEngine
from stream.records import DEAD_LETTER, DEFECT_RATES, OUTPUT_STREAMS, REWRITE_TRIGGERS
from stream.settings import Settings
from tests.test_processors import idle_gap_lines

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample.jsonl"


def random_items(n: int, seed: int) -> list[int]:
    r = random.Random(seed)
    return [r.getrandbits(64) for _ in range(n)]


def test_false_positive_rate_within_documented_bound_when_full():
    """Every generation full (the worst case): the measured rate is below the bound, and the
    filter is not trivially empty-handed (it does produce some false positives)."""
    f = SeenFilter(capacity=5_000, generations=4, fp_rate=0.01)
    for fp in random_items(20_000, seed=1):
        f.add(fp)
    assert len(f.live) == 4 and all(gen.count == 5_000 for gen in f.live)
    queries = random_items(100_000, seed=2)
    rate = sum(fp in f for fp in queries) / len(queries)
    # Expected ~0.01 at most (union bound); 1,000 expected hits, so 1.2x is > 6 sd away.
    assert 0.001 < rate <= 0.01 * 1.2, rate


def test_default_filter_rate_and_size():
    """The defaults as documented in the README: 1e-4, ~1.1 MB, 400k events."""
    f = SeenFilter()  # Settings' defaults
    s = Settings()
    assert (f.capacity, f.generations, f.fp_rate) == (
        s.dedupe_filter_capacity, s.dedupe_filter_generations, s.dedupe_filter_fp_rate)
    for fp in random_items(4 * f.capacity, seed=3):
        f.add(fp)
    assert 1.0e6 < f.size_bytes() < 1.2e6
    queries = random_items(100_000, seed=4)
    assert sum(fp in f for fp in queries) / len(queries) <= 2e-4


def test_no_false_negatives_within_horizon_and_bounded_size():
    f = SeenFilter(capacity=1_000, generations=3, fp_rate=0.001)
    items = random_items(10_000, seed=5)
    sizes = set()
    for i, fp in enumerate(items, 1):
        f.add(fp)
        if i % 500 == 0:
            sizes.add((len(f.live) <= 3, f.size_bytes() <= 3 * ((f.n_bits + 7) // 8)))
            horizon = items[max(0, i - 2_000):i]  # (generations - 1) * capacity
            assert all(x in f for x in horizon)
    assert sizes == {(True, True)}
    assert f.items() <= 3_000
    # Items from long before the horizon are forgotten (only false positives remain).
    forgotten = sum(x in f for x in items[:5_000])
    assert forgotten <= 20


def test_snapshot_rows_round_trip_with_rotation():
    """Saved in several takes across rotations: rebuilt from the surviving rows the filter
    has the same bits and answers; rows of dropped generations are reported for deletion."""
    f = SeenFilter(capacity=300, generations=3, fp_rate=0.01)
    table: dict[tuple[int, int], bytes] = {}
    items = random_items(2_000, seed=6)
    for chunk in range(0, len(items), 170):
        for fp in items[chunk:chunk + 170]:
            f.add(fp)
        rows, dropped = f.take_rows()
        for generation, row, blob in rows:
            assert (generation, row) not in table
            table[(generation, row)] = blob
        for generation, count in dropped:
            for row in range(count):
                del table[(generation, row)]
    assert {g for g, _ in table} == {gen.number for gen in f.live}
    g = SeenFilter(capacity=300, generations=3, fp_rate=0.01)
    g.load_rows((gen, row, blob) for (gen, row), blob in table.items())
    assert g.bits() == f.bits()
    assert [gen.count for gen in g.live] == [gen.count for gen in f.live]
    queries = items + random_items(5_000, seed=7)
    assert [x in g for x in queries] == [x in f for x in queries]
    # A crash before a deletion landed: the stale generation is ignored and dropped again.
    stale = {(-1, 0): table[min(table)]} | table
    h = SeenFilter(capacity=300, generations=3, fp_rate=0.01)
    h.load_rows((gen, row, blob) for (gen, row), blob in stale.items())
    assert h.bits() == f.bits() and h.take_rows() == ([], [(-1, 1)])


def test_fingerprint_is_the_same_in_every_process():
    """No salted ``hash()``: a restarted worker must find what the last one saved."""
    code = ("from stream.dedupe import fingerprint; "
            "print(fingerprint('dev1', 'e1'), fingerprint('dev\\u00e9', 'x\\ud800'))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
            for seed in ("1", "2")}
    here = (fingerprint("dev1", "e1"), fingerprint("dev\u00e9", "x\ud800"))
    assert runs == {f"{here[0]} {here[1]}\n"}


Records = dict[str, list[dict]]
Replayed = tuple[Records, FeedbackEngine]


def deliver(engine: FeedbackEngine, lines: list[bytes], out: Records, first: int = 1) -> None:
    """``lines`` through ``engine`` (as a replay reads them, numbered from ``first``), the
    records into ``out`` per stream."""
    for number, line in enumerate(lines, first):
        for o in engine.process(line, {"line": number}):
            out[o.stream].append(o.record)


def end_of_input(engine: FeedbackEngine, out: Records) -> Replayed:
    for o in engine.flush():
        out[o.stream].append(o.record)
    return out, engine


def replay(lines: list[bytes]) -> Replayed:
    """The replay's records per stream, and its engine (for the counters)."""
    engine, out = FeedbackEngine(), {name: [] for name in OUTPUT_STREAMS}
    deliver(engine, lines, out)
    return end_of_input(engine, out)


def delivered_once_and_twice(lines: list[bytes]) -> tuple[Replayed, Replayed]:
    """``replay`` of ``lines`` and of ``lines + lines``. The second delivery goes on from a copy
    of the first's engine and records before the end of input (the first delivery runs
    once)."""
    engine, out = FeedbackEngine(), {name: [] for name in OUTPUT_STREAMS}
    deliver(engine, lines, out)
    engine2, out2 = pickle.loads(pickle.dumps((engine, out), protocol=pickle.HIGHEST_PROTOCOL))
    deliver(engine2, lines, out2, first=len(lines) + 1)
    return end_of_input(engine, out), end_of_input(engine2, out2)


def final_per_key(records: list[dict]) -> dict[tuple, dict]:
    """The last defect-rate record per key, or the last rewrite decision per trigger key
    without the time it was taken."""
    return {(r["key_type"], r["key"]) if "key_type" in r else
            (r["layer"], r["device_id"], r["utterance"]):
            {k: v for k, v in r.items() if k != "ts" or "key_type" in r} for r in records}


def without_source(records: list[dict]) -> Counter:
    return Counter(orjson.dumps({k: v for k, v in r.items() if k != "source"},
                                option=orjson.OPT_SORT_KEYS) for r in records)


def event_count(out: Records, eng: FeedbackEngine) -> int:
    """Events with an event id in a replay (what a repeat must count as duplicates):
    processed or dropped as duplicates, plus those dead-lettered after parsing (feedback for
    an unknown turn, late events)."""
    kept = sum(n for (etype, outcome), n in eng.stats.events.items()
               if etype in ("turn", "feedback") and outcome != "dead_letter")
    return kept + sum(r["reason"] in PARSED_DEAD_LETTERS for r in out[DEAD_LETTER])


PARSED_DEAD_LETTERS = ("unknown_turn", "late")


@pytest.mark.parametrize("stream", ["sample", "sparse"])
def test_stream_delivered_twice_equals_delivered_once(stream):
    """Every output of a second full delivery (devices long expired, events hours older than
    the watermark) is what one delivery gives: each repeat is a duplicate, none is `late`,
    no estimate moves. Malformed lines have no event id: they are dead-lettered again (never
    silently dropped)."""
    lines = ([line for line in SAMPLE.read_bytes().splitlines() if line.strip()]
             if stream == "sample" else idle_gap_lines())
    (once, eng1), (twice, eng2) = delivered_once_and_twice(lines)
    # Valid events the first delivery dead-lettered (feedback for an unknown turn) were seen:
    # their repeats are duplicates too.
    invalid = [r for r in once[DEAD_LETTER] if r["reason"] not in PARSED_DEAD_LETTERS]
    for name in OUTPUT_STREAMS:
        if name == DEAD_LETTER:
            assert without_source(twice[name]) == without_source(once[name] + invalid)
        elif name in (DEFECT_RATES, REWRITE_TRIGGERS):
            # Estimates and rewrite decisions go out per batch of events: where the batches
            # end differs (the repeats make more of them), the final ones may not (a
            # decision's ``ts`` is when it was taken).
            assert final_per_key(twice[name]) == final_per_key(once[name]), name
        else:
            assert twice[name] == once[name], name
    repeats = sum(n for (etype, outcome), n in eng2.stats.events.items()
                  if etype in ("turn", "feedback") and outcome == "duplicate")
    assert repeats == event_count(once, eng1) and eng2.stats.evictions["device"] > 0


def test_old_event_is_duplicate_when_seen_and_late_when_new():
    eng = FeedbackEngine()
    base = 1_717_200_000_000

    def turn(eid: str, ts: int) -> bytes:
        return orjson.dumps({"type": "turn", "event_id": eid, "device_id": "d", "ts": ts,
                             "utterance": "play jazz"})

    for i in range(300):  # more than the exact ids a device keeps
        eng.process(turn(f"e{i}", base + i * 1_000))
    assert eng.process(turn("e3", base + 3_000)) == []  # 5 min older than the device
    assert eng.stats.events[("turn", "duplicate")] == 1
    late = eng.process(turn("new", base + 3_000))
    assert [o.record["reason"] for o in late] == ["late"]
    assert eng.stats.events[("turn", "duplicate")] == 1
