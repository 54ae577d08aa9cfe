"""The batch processors of the topology, without a broker: partitioned processing, table
state and restarts give exactly the in-process replay's records."""

from __future__ import annotations

import pickle
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.devices import end_watermark
from stream.engine import FeedbackEngine
from stream.rates import DefectRateTracker, RateStage
from stream.records import (
    CHAINS,
    DEAD_LETTER,
    DEFECT_RATES,
    RATE_UPDATES,
    REWRITE_TRIGGERS,
    Output,
)
from stream.settings import Settings
from tests.scale import FULL
from topologies.processors import (
    DeviceProcessor,
    GlobalRewriteProcessor,
    Message,
    PersonalRewrites,
    RateProcessor,
    coalesce,
    decode,
    expand_chains,
    expand_rate_updates,
    partition_of,
)
from topologies.settings import KafkaSettings

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample.jsonl"
PARTITIONS = 4


def sample_lines() -> list[bytes]:
    return [line for line in SAMPLE.read_bytes().splitlines() if line.strip()]


def replay_records(lines: list[bytes], **settings: Any) -> tuple[Counter, dict]:
    eng = FeedbackEngine(Settings(**settings))
    outs = [o for line in lines for o in eng.process(line)] + eng.flush()
    return canonical(outs)


def canonical(outputs) -> tuple[Counter, dict]:
    """Signal records as a multiset (dead letters without their source), the final
    defect-rate record per key, and the final rewrite decision per trigger key (rewrites are
    decided per batch: when they are published depends on where the batches end)."""
    signals: Counter = Counter()
    rates: dict = {}
    decisions: dict = {}
    for out in outputs:
        if out.stream == DEFECT_RATES:
            rates[out.key] = out.record
        elif out.stream == REWRITE_TRIGGERS:
            decisions[out.key] = out.record["rewrite"]
        elif out.stream != RATE_UPDATES:
            record = {k: v for k, v in out.record.items() if k != "source"}
            signals[(out.stream, orjson.dumps(record, option=orjson.OPT_SORT_KEYS))] += 1
    signals.update((REWRITE_TRIGGERS, orjson.dumps([key, rewrite])) for key, rewrite in
                   decisions.items())
    return signals, rates


def to_messages(lines: list[bytes]) -> list[Message]:
    """Partition like the producer: by device_id; watermarks to every partition."""
    offsets = Counter()
    msgs = []
    for line in lines:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and obj.get("type") == "watermark":
            targets = range(PARTITIONS)
        elif isinstance(obj, dict) and isinstance(obj.get("device_id"), str):
            targets = [partition_of(obj["device_id"], PARTITIONS)]
        else:
            targets = [offsets.total() % PARTITIONS]
        for p in targets:
            msgs.append(Message(None, line, p, offsets[p], "interactions"))
            offsets[p] += 1
    return msgs


def run_pipeline(msgs: list[Message], restart_every: int | None = None, *,
                 end: list[Message] | None = None, **overrides: Any
                 ) -> tuple[list[Output], list[Output]]:
    """All stages as the Faust app wires them, with dicts as tables, over ``msgs`` in batches
    of 100 and then ``end`` as a batch of its own: the outputs before ``end`` and those of
    ``end``. Every ``restart_every`` messages the processors are replaced by fresh ones over
    the same tables."""
    settings = KafkaSettings(partitions=PARTITIONS, **overrides)
    tables: dict[str, dict] = {"devices": {}, "rates": {}, "personal": {}, "global": {}}

    def fresh():
        personal = PersonalRewrites(settings, tables["personal"])
        return (DeviceProcessor(settings, tables["devices"], chains=personal),
                RateProcessor(settings, tables["rates"]),
                GlobalRewriteProcessor(settings, tables["global"]))

    devices, rates, rewrites = fresh()
    outputs: list[Output] = []
    rate_offsets = Counter()
    chain_offset = 0
    batches = [msgs[start:start + 100] for start in range(0, len(msgs), 100)]
    for n, batch in enumerate([*batches, end] if end else batches):
        if restart_every and n < len(batches) and n and n * 100 % restart_every == 0:
            devices, rates, rewrites = fresh()
        if n == len(batches):
            before_end, outputs = outputs, []
        updates, chains = [], []
        for out in devices.process(batch):
            if out.stream == RATE_UPDATES:
                p = partition_of(out.key, PARTITIONS)
                updates.append(Message(None, orjson.dumps(out.record), p, rate_offsets[p]))
                rate_offsets[p] += 1
            elif out.stream == CHAINS:
                chains.append(Message(None, orjson.dumps(out.record), 0, chain_offset))
                chain_offset += 1
            else:
                outputs.append(out)
        outputs += rates.process(updates)
        outputs += rewrites.process(chains)
        for processor in (devices, rates, rewrites):  # outputs "published": state follows
            processor.commit()
    return (before_end, outputs) if end else (outputs, [])


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    if not SAMPLE.exists():
        pytest.fail(f"sample stream missing: {SAMPLE}")
    return sample_lines()


@pytest.fixture(scope="module")
def replayed(lines: list[bytes]) -> tuple[Counter, dict]:
    """The in-process replay of the sample (only read): what every partitioned run must give."""
    return replay_records(lines)


def test_partitioned_pipeline_equals_replay(lines, replayed):
    outputs, _ = run_pipeline(to_messages(lines))
    assert canonical(outputs) == replayed


def test_restarts_continue_from_table_state(lines, replayed):
    outputs, _ = run_pipeline(to_messages(lines), restart_every=700)
    assert canonical(outputs) == replayed


def test_rate_updates_redelivered_are_not_double_counted():
    settings = KafkaSettings(partitions=1)
    table: dict[str, bytes] = {}
    proc = RateProcessor(settings, table)
    update = orjson.dumps({"key_type": "utterance", "key": "play jazz", "defective": True,
                           "ts": 1_700_000_000_000, "event_id": "e1"})
    first = proc.process([Message(None, update, 0, 0)])
    proc.commit()
    again = RateProcessor(settings, table).process([Message(None, update, 0, 0),
                                                    Message(None, update, 0, 1)])
    assert first[0].record["plays"] == 1
    assert [o.record["plays"] for o in again] == [2]


class CrashingTable(dict):
    """A view of ``table`` where writes land only while ``budget`` (shared between the tables
    of one worker: one producer sends them in order) lasts: a worker killed while its state
    writes were on their way to the changelogs."""

    def __init__(self, table: dict, budget: list[int]) -> None:
        super().__init__()
        self.table, self.budget = table, budget

    def get(self, key, default=None):
        return self.table.get(key, default)

    def __setitem__(self, key, value) -> None:
        if self.budget[0] > 0:
            self.budget[0] -= 1
            self.table[key] = value

    def pop(self, key, default=None):
        if self.budget[0] > 0:
            self.budget[0] -= 1
            return self.table.pop(key, default)
        return default


def batches_of(lines: list[bytes], size: int = 100) -> list[list[Message]]:
    msgs = to_messages(lines)
    return [msgs[i:i + size] for i in range(0, len(msgs), size)]


def stage1_tables() -> dict:
    """What a stage-1 run leaves: its tables, the topics it published, the signal records."""
    return {"devices": {}, "personal": {}, RATE_UPDATES: [], CHAINS: [], "signals": Counter()}


def stage1_worker(settings: KafkaSettings, tables: dict) -> DeviceProcessor:
    """A fresh stage-1 worker (devices + personal layer) over ``tables``."""
    return DeviceProcessor(settings, tables["devices"],
                           chains=PersonalRewrites(settings, tables["personal"]))


def run_stage1(batches, settings, tables, landing: int | None = None,
               devices: DeviceProcessor | None = None) -> int:
    """Stage 1 over ``batches`` (a fresh worker, or ``devices`` going on), publishing
    rate-updates and chains into topic lists; with ``landing``, the last batch's outputs are
    published and then the worker dies during its state writes: only the first ``landing`` of
    them land. Returns how much of ``landing`` was left (0: some writes were lost)."""
    budget = [0]
    devices = devices if devices is not None else stage1_worker(settings, tables)
    for n, batch in enumerate(batches, 1):
        for out in devices.process(batch):
            if out.stream in (RATE_UPDATES, CHAINS):
                tables[out.stream].append(out)
            else:
                tables["signals"][(out.stream, orjson.dumps(out.record))] += 1
        if landing is not None and n == len(batches):
            budget[0] = landing
            devices.table = CrashingTable(tables["devices"], budget)
            devices.chains.table = CrashingTable(tables["personal"], budget)
        devices.commit()
    return budget[0]


def feed_stage2(rates: RateProcessor, offsets: Counter, updates: list) -> None:
    """Stage 2 over rate-updates as stage 1 published them, one message per poll; ``offsets``:
    the next offset of each partition of the rate-updates topic."""
    for out in updates:
        p = partition_of(out.key, PARTITIONS)
        rates.process([Message(None, orjson.dumps(out.record), p, offsets[p])])
        offsets[p] += 1


def run_behind_stage1(settings, tables, stage2: tuple[RateProcessor, Counter] | None = None):
    """Stage 2 and the global layer over everything stage 1 published; ``stage2``: a stage 2
    (and its topic offsets) that has applied the first of the rate-updates already."""
    rates, offsets = stage2 if stage2 is not None else (RateProcessor(settings, {}), Counter())
    feed_stage2(rates, offsets, tables[RATE_UPDATES][offsets.total():])
    rates.commit()
    rewrites = GlobalRewriteProcessor(settings, {})
    rewrites.process([Message(None, orjson.dumps(out.record), 0, n)
                      for n, out in enumerate(tables[CHAINS])])
    return rates, rewrites


# The batch the kill cases kill: half way at full scale; quick, six batches before the end of
# the sample (what runs again after the kill is what a case costs; still a warm state).
KILLED_FROM_END = None if FULL else 6


@pytest.fixture(scope="module")
def clean_stage1(lines: list[bytes], replayed: tuple[Counter, dict]) -> dict:
    """The run without a crash that every crash case is compared with, its stages behind, the
    replay's final estimates, and (pickled) that run's stage-1 worker, tables and stage 2 just
    before the killed batch: each case goes on from a copy (its worker ran the same until
    then), all else is only read."""
    settings, clean, batches = KafkaSettings(partitions=PARTITIONS), stage1_tables(), \
        batches_of(lines)
    crash_at = len(batches) - KILLED_FROM_END if KILLED_FROM_END else len(batches) // 2
    devices, stage2 = stage1_worker(settings, clean), (RateProcessor(settings, {}), Counter())
    run_stage1(batches[:crash_at - 1], settings, clean, devices=devices)
    feed_stage2(*stage2, clean[RATE_UPDATES])
    before = pickle.dumps((devices, clean, stage2), protocol=pickle.HIGHEST_PROTOCOL)
    run_stage1(batches[crash_at - 1:], settings, clean, devices=devices)
    rates, rewrites = run_behind_stage1(settings, clean, stage2)
    return {"settings": settings, "batches": batches, "crash_at": crash_at, "before": before,
            "clean": clean, "rates": rates, "rewrites": rewrites, "want": replayed[1]}


# Where the state writes stop (10**9: all landed) and how many batches before the killed one
# the input offsets were committed: at full scale every pair, quick four of the pairs (each
# landing once, each rewind twice).
LANDINGS = [0, 3, 30, 45, 60, 90, 120, 10**9]
KILLS = ([(landing, rewind) for rewind in (0, 2) for landing in LANDINGS] if FULL
         else [(0, 2), (3, 0), (60, 2), (10**9, 0)])


@pytest.mark.slow
@pytest.mark.parametrize(("landing", "rewind"), KILLS)
def test_stage1_killed_during_state_writes_counts_every_turn_once(clean_stage1, landing,
                                                                 rewind):
    """SIGKILL between publishing a batch's outputs and writing its state, with any part of
    the state writes landed, and input offsets committed ``rewind`` batches before it: the
    restarted stage 1 re-emits the batch's rate-updates and chains, and the stages behind
    apply each turn's update and each chain exactly once (the ``src`` positions), ending
    with exactly the estimates and rewrite-miner states of a run without the crash."""
    c = clean_stage1
    settings, batches, crash_at = c["settings"], c["batches"], c["crash_at"]
    clean, want = c["clean"], c["want"]

    devices, crashed, stage2 = pickle.loads(c["before"])
    lost_writes = not run_stage1(batches[crash_at - 1:crash_at], settings, crashed,
                                 landing=landing, devices=devices)
    resumed = len(crashed[RATE_UPDATES])
    run_stage1(batches[crash_at - 1 - rewind:], settings, crashed)
    assert len(crashed[RATE_UPDATES]) > resumed  # there was something to re-emit
    rates, rewrites = run_behind_stage1(settings, crashed, stage2)

    positions = Counter((o.key, tuple(u["src"]), u["event_id"])
                        for o in crashed[RATE_UPDATES] for u in o.record["updates"])
    re_emitted = sum(n - 1 for n in positions.values())
    assert rates.skipped == re_emitted
    assert re_emitted > 0 if landing == 0 else (re_emitted == 0 or lost_writes)
    final = {k: RateStage.record(*k.split(":", 1), DefectRateTracker(*decode(v)["t"]))
             for k, v in rates.table.items()}
    assert final == want == {k: RateStage.record(*k.split(":", 1), DefectRateTracker(
        *decode(v)["t"])) for k, v in c["rates"].table.items()}
    assert rewrites.miner.to_dict() == c["rewrites"].miner.to_dict()
    # Every signal record of the clean run, nothing else (repeats: at-least-once).
    assert set(crashed["signals"]) == set(clean["signals"])
    personal = {k: decode(v)["m"] for k, v in crashed["personal"].items()}
    assert personal == {k: decode(v)["m"] for k, v in clean["personal"].items()}


def test_stage1_redelivered_from_far_back_changes_nothing(lines):
    """A worker killed before its first input-offset commit (or committing long after its
    state writes): the next one gets the whole partition again. The restored state holds
    the last offset it covers per partition, so those messages are counted as duplicates
    and skipped, and the outputs are exactly those of a run without the crash. (Processed
    again, a device's old event was dead-lettered as ``late`` if the device had expired and
    come back since: seen on the broker after a SIGKILL.)"""
    settings, batches = KafkaSettings(partitions=PARTITIONS), batches_of(lines)
    half = len(batches) // 2

    crashed = stage1_tables()
    devices = stage1_worker(settings, crashed)
    run_stage1(batches[:half], settings, crashed, devices=devices)
    # The run without the crash: a copy of that worker going on (the first half runs once).
    devices, clean = pickle.loads(pickle.dumps((devices, crashed)))
    run_stage1(batches[half:half + 1], settings, clean, devices=devices)
    run_stage1(batches[:half + 1], settings, crashed)  # everything from offset 0 again
    assert crashed["signals"] == clean["signals"]  # not even repeats
    assert not [k for k in crashed["signals"] if k[0] == DEAD_LETTER and b'"late"' in k[1]]
    assert [o.record for o in crashed[RATE_UPDATES]] == [o.record for o in clean[RATE_UPDATES]]
    assert [o.record for o in crashed[CHAINS]] == [o.record for o in clean[CHAINS]]


def test_one_rate_update_record_per_key_and_one_estimate_per_key_per_batch(lines):
    """Stage 1 coalesces a batch's updates per key (same updates, same order) and stage 2
    publishes one estimate per changed key per batch: its final state."""
    settings = KafkaSettings(partitions=PARTITIONS)
    batch = to_messages(lines)[:1_000]
    single = []  # what the engines emit, one update per finalised turn and key
    processor = DeviceProcessor(settings, {})
    for msg in batch:
        source = {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset}
        single += [o for o in processor.engine(msg.partition).process(msg.value, source)
                   if o.stream == RATE_UPDATES]
    outputs = DeviceProcessor(settings, {}, chains=PersonalRewrites(settings, {})).process(batch)
    coalesced = [o for o in outputs if o.stream == RATE_UPDATES]
    assert len(coalesced) == len({o.key for o in coalesced}) < len(single) / 2
    by_key: dict[str, list] = {}
    for o in single:
        by_key.setdefault(o.key, []).append(o.record)
    assert {o.key: expand_rate_updates(o.record) for o in coalesced} == by_key
    (chains,) = [o for o in outputs if o.stream == CHAINS]
    assert len(expand_chains(chains.record)) > 500

    messages = [Message(o.key.encode(), orjson.dumps(o.record), 0, n)
                for n, o in enumerate(coalesced)]
    rates = RateProcessor(settings, {})
    estimates = [o for o in rates.process(messages) if o.stream == DEFECT_RATES]
    assert len(estimates) == len({o.key for o in estimates}) == len(by_key)
    for o in estimates:
        key_type, key = o.key.split(":", 1)
        assert o.record == RateStage.record(key_type, key, rates.stage.get(key_type, key))
        assert o.record["plays"] == len(by_key[o.key])


def test_merged_records_are_capped_and_keep_order(monkeypatch):
    """However large the batch, a merged record holds at most MAX_MERGED items (Kafka's
    message size), and a key's records come out in the order of their items."""
    from stream.records import Output
    from topologies.processors import merging

    monkeypatch.setattr(merging, "MAX_MERGED", 3)
    outputs = [Output(RATE_UPDATES, f"intent:{k}", {"key_type": "intent", "key": k,
                                                    "defective": False, "ts": n,
                                                    "event_id": f"e{n}"})
               for n, k in enumerate("aaaaaaaba")]
    outputs += [Output(CHAINS, "d", {"event_ids": [f"c{n}"]}) for n in range(4)]
    merged = coalesce(outputs)
    sizes = [(o.key, len(o.record.get("updates") or o.record["chains"])) for o in merged]
    assert sorted(sizes) == sorted([("intent:a", 3), ("intent:a", 3), ("intent:a", 2),
                                    ("intent:b", 1), (CHAINS, 3), (CHAINS, 1)])
    a = [u["ts"] for o in merged if o.key == "intent:a" for u in o.record["updates"]]
    assert a == [0, 1, 2, 3, 4, 5, 6, 8]
    assert [c["event_ids"][0] for o in merged if o.key == CHAINS
            for c in expand_chains(o.record)] == ["c0", "c1", "c2", "c3"]


@cache
def idle_gap_lines(events: int = 3_000) -> list[bytes]:
    """A sparse stream: 400 devices with hours between their sessions, explicit feedback up
    to 5 minutes after a response, no final watermark (the stream just stops). Only read:
    generated once per run (three test modules replay it)."""
    from stream.datasets.synth import generate

    return [line for line, _ in generate(events, 400, seed=21, session_gap_ms=4 * 3_600_000,
                                         feedback_delay_ms=300_000, final_watermark=False)]


def with_end_of_stream(lines: list[bytes]) -> list[bytes]:
    """``lines`` and the watermark ``produce --end-of-stream`` sends after them."""
    newest = max(orjson.loads(line)["ts"] for line in lines)
    end = end_watermark(newest, KafkaSettings())
    return [*lines, orjson.dumps({"type": "watermark", "ts": end})]


def test_sparse_stream_partitioned_equals_replay():
    """Long idle gaps leave each partition's stream watermark far behind the whole stream's,
    so a turn is final at other moments in the two paths: no record may depend on that (late
    feedback, feedback past the teach window), and the end of input must finalise the same
    turns (the replay's end of file = the end-of-stream watermark on every partition)."""
    lines = idle_gap_lines()
    expected_signals, expected_rates = replay_records(lines)
    msgs = to_messages(with_end_of_stream(lines))  # the end watermark: one per partition, last
    without_end, at_end = run_pipeline(msgs[:-PARTITIONS], end=msgs[-PARTITIONS:])
    signals, rates = canonical(without_end + at_end)
    assert signals == expected_signals
    assert rates == expected_rates
    # The stream exercises what it is meant to: feedback both counted and past the window,
    # and turns that only the end of the stream finalises.
    streams = Counter(stream for stream, _ in signals.elements())
    assert streams["defects"] > 400 and streams["dead-letter"] > 100
    assert sum(o.stream == "defects" for o in without_end) < streams["defects"]
