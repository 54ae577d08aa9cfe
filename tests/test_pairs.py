"""Collaborative rephrase evidence: what it links and what it does not, bounded memory,
snapshots, and the same links in the partitioned (Kafka-shaped) pipeline as in the replay,
restarts included."""

from __future__ import annotations

from collections import Counter
from functools import cache

import orjson
import pytest

from stream.datasets import phrasings
from stream.engine import FeedbackEngine
from stream.pair_model import FEATURES
from stream.pairs import PairEvidence
from stream.records import CHAINS, RATE_UPDATES, REPHRASES, REWRITE_TRIGGERS, Output
from stream.settings import Settings
from tests.scale import FULL
from tests.test_processors import (
    PARTITIONS,
    batches_of,
    canonical,
    run_pipeline,
    to_messages,
)
from topologies.processors import (
    DeviceProcessor,
    PersonalRewrites,
    expand_chains,
    expand_rate_updates,
)
from topologies.processors.devices import WATERMARK_PREFIX
from topologies.settings import KafkaSettings

WATERMARK = WATERMARK_PREFIX.removesuffix(":")  # write_kind of the commit points
ALARM = ("wake me up at seven", "set an alarm for 7 am")


def test_a_restatement_after_failures_is_supported_a_follow_up_after_successes_is_not():
    ev = PairEvidence()
    for _ in range(5):  # what people mean by each request, when it goes well
        ev.count("", ALARM[0], "alarm", False, True)
        ev.count("", "what time is it", "time", False, True)
    for _ in range(3):
        ev.count("what time is it", "who made you", "who_made_you", False, True)
        ev.count(ALARM[0], ALARM[1], "alarm", True, True)
    assert ev.support(*ALARM, "alarm", a_failed=False) == 0.6
    assert ev.support("what time is it", "who made you", "who_made_you", a_failed=True) == 0.0
    # Another device's wording of the goal, never seen as a pair: the meaning still links it
    # when the first request failed visibly this time, not when it did not.
    assert ev.support(ALARM[0], "alarm for seven please", "alarm", a_failed=True) == 0.6
    ev2 = PairEvidence()
    for _ in range(5):
        ev2.count("", ALARM[0], "alarm", False, True)
    assert ev2.support(ALARM[0], "alarm for seven please", "alarm", a_failed=False) == 0.0


def test_memory_is_bounded_and_heavy_hitters_stay():
    ev = PairEvidence(max_pairs=40)
    for i in range(1_000):
        ev.count("heavy", "hitter", "x", True, True)
        ev.count(f"rare {i}", f"pair {i}", f"intent {i}", False, True)
    assert max(len(ev.pairs), len(ev.intents), len(ev.meanings)) <= 40
    assert ev.pairs["heavy\x1fhitter"][0] == 1_000 and ev.evictions > 0


@pytest.mark.parametrize("learn", [False, True])
def test_snapshot_round_trip(learn: bool) -> None:
    ev = PairEvidence(learn=learn)
    ev.count("", ALARM[0], "alarm", False, True)
    ev.count(*ALARM, "alarm", True, True, [0.2, 1.5, 0.0])  # teaches the model
    ev.clock = 123
    assert ev.model.learned == learn
    data = orjson.loads(orjson.dumps(ev.to_dict()))
    assert PairEvidence.from_dict(data).to_dict() == ev.to_dict()


@cache
def population_pairs() -> list[tuple[bytes, dict]]:
    """The population stream and its truth (only read: generated once per run; the quick
    tests/test_phrasings.py checks it)."""
    return list(phrasings.generate(5_000, 120, seed=9))


@cache
def population_lines() -> list[bytes]:
    return [line for line, _ in population_pairs()]


def replay(lines: list[bytes], model: bool = False) -> tuple[list[Output], FeedbackEngine]:
    """The in-process replay of ``lines``: its outputs and its engine."""
    eng = FeedbackEngine(Settings(rephrase_model=model))
    return [o for line in lines for o in eng.process(line)] + eng.flush(), eng


def rephrase_links(outputs: list[Output]) -> set[tuple[str, str]]:
    return {(o.record["event_id"], o.record["rephrase_of"]) for o in outputs
            if o.stream == REPHRASES}


@cache
def population_replay(model: bool) -> tuple[list[Output], FeedbackEngine]:
    """``replay`` of the population stream, run once per run for the tests that only read its
    outputs and its engine's learned models."""
    return replay(population_lines(), model)


@cache
def words_alone_links() -> frozenset[tuple[str, str]]:
    """The rephrase links of the population stream with no evidence deciding (nor a model:
    it acts through the evidence's ``decide``), replayed once per run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PairEvidence, "decide", lambda self, *args: 0.0)
        return frozenset(rephrase_links(replay(population_lines())[0]))


@pytest.mark.parametrize("model", [False, True])
def test_evidence_links_what_words_alone_do_not(model: bool) -> None:
    outputs, eng = population_replay(model)
    with_evidence = rephrase_links(outputs)
    # With the model on, every partition's model learned from the stream's hindsight labels
    # and decides now; off, none learns.
    models = [ev.model for ev in eng.stage1.devices.evidence.parts.values()]
    assert len(models) == 4 and all(m.warm == model for m in models)
    assert len(with_evidence) > len(words_alone_links()) + 100


def test_hindsight_labels_teach_the_model():
    ev = PairEvidence(learn=True)
    look = [0.1, 1.0, 0.0]  # lexical score, seconds after the response, no frame swap
    ev.count(*ALARM, "alarm", True, True, look)  # a failed visibly, b went fine: positive
    ev.count("what time is it", "who made you", "who_made_you", False, True, look)  # negative
    ev.count(*ALARM, "alarm", True, False, look)  # both failed: no label
    ev.count(*ALARM, "alarm", True, True)  # no look recorded (an older state): not learned
    assert ev.model.learned == 2
    # What the stream taught: quick reactions and intents that follow failures of ``a``
    # mean a restatement; a pair of the rejected kind stays below the link thresholds.
    _, eng = population_replay(True)  # positional, as the other callers: one cache entry
    for part in eng.stage1.devices.evidence.parts.values():
        weights = dict(zip(FEATURES, part.model.to_row()[2:], strict=True))
        assert weights["react"] < 0 < weights["intent_fail"] and weights["lex"] > 0, weights
        assert part.decide("what time is it", "who made you", "who_made_you", False,
                           [0.0, 12.0, 0.0]) == 0.0


def without_global_rewrites(view: tuple[Counter, dict]) -> tuple[Counter, dict, set]:
    """The global rewrite layer sees chains in arrival order, which differs between one process
    and four partitions (tests/test_kafka_pipeline.py): its numbers may differ, not which
    utterances get a rewrite decision."""
    signals, rates = view
    rewritten = set()
    for stream, blob in list(signals):
        if stream != REWRITE_TRIGGERS:
            continue
        key, _ = orjson.loads(blob)  # canonical(): [trigger key, final rewrite]
        if key.startswith("global:"):
            del signals[(stream, blob)]
            rewritten.add(key.removeprefix("global:"))
    return signals, rates, rewritten


# Quick, the classifier on only: its rows restored on top of the evidence rows at the restart.
@pytest.mark.parametrize("model", [False, True] if FULL else [True])
def test_partitioned_pipeline_with_restarts_equals_replay_on_evidence_links(model: bool) -> None:
    lines = population_lines()
    expected = without_global_rewrites(canonical(population_replay(model)[0]))
    # Quick: one restart half way (each restart restores every partition from the tables,
    # ~0.5 CPU s at this size); 25 batches on each side of it run on the in-memory state.
    for restart_every in (None, 900) if FULL else (2_500,):
        outputs, _ = run_pipeline(to_messages(lines), restart_every=restart_every,
                                     rephrase_model=model)
        assert without_global_rewrites(canonical(outputs)) == expected, restart_every


def test_a_confident_intent_people_do_not_mean_is_blamed_on_nlu():
    from tests.events import by_stream, turn, watermark

    eng = FeedbackEngine()
    for i in range(8):  # what people mean by "play harry potter", when it works
        eng.process(turn(f"ok{i}", i * 1_000, "play harry potter", device=f"d{i}",
                         intent="PlayAudiobook", nlu_confidence=0.9, asr_confidence=0.9))
    eng.process(watermark(200_000))
    eng.process(turn("bad", 300_000, "play harry potter", device="d0", intent="PlayVideo",
                     nlu_confidence=0.9, asr_confidence=0.9, tts_start_ts=300_800,
                     tts_end_ts=305_000, barge_in_ts=302_000))
    defects = by_stream(eng.flush())["defects"]
    assert [(d["event_id"], d["failure_point"]) for d in defects] == [("bad", "nlu")]


class RecordingTable(dict):
    """A view of ``table`` that applies writes and records them, in order, in ``log`` (shared
    by the tables of one worker, as one producer sends them)."""

    def __init__(self, name: str, table: dict, log: list) -> None:
        super().__init__()
        self.name, self.table, self.log = name, table, log

    def get(self, key, default=None):
        return self.table.get(key, default)

    def __setitem__(self, key, value) -> None:
        self.log.append((self.name, key, value))
        self.table[key] = value

    def pop(self, key, default=None):
        self.log.append((self.name, key, None))
        return self.table.pop(key, default)


def copy_tables(tables: dict[str, dict]) -> dict[str, dict]:
    """A copy to write to: the rows are bytes (immutable), so the dicts are all to copy."""
    return {name: dict(rows) for name, rows in tables.items()}


def stage1(settings: KafkaSettings, tables: dict) -> DeviceProcessor:
    return DeviceProcessor(settings, tables["devices"],
                           chains=PersonalRewrites(settings, tables["personal"]))


# The batch the kill test kills, counted from the end of the stream: every landing runs the
# batches from there to the end again (quick: two and the last, of 10 messages).
KILLED_FROM_END = 6 if FULL else 3


@pytest.fixture(scope="module")
def crash_point() -> dict:
    """A clean stage-1 run with the model on: each batch's outputs, the tables just before
    the state writes of batch ``crash_at`` (its outputs were published), those writes in
    order, and the final tables."""
    settings = KafkaSettings(partitions=PARTITIONS, rephrase_model=True)
    batches = batches_of(population_lines())
    crash_at = len(batches) - KILLED_FROM_END
    tables: dict = {"devices": {}, "personal": {}}
    devices, outputs, writes, before = stage1(settings, tables), [], [], {}
    for n, batch in enumerate(batches):
        outputs.append(devices.process(batch))
        if n == crash_at:
            before = copy_tables(tables)
            devices.table = RecordingTable("devices", tables["devices"], writes)
            devices.chains.table = RecordingTable("personal", tables["personal"], writes)
        devices.commit()
        if n == crash_at:
            devices.table, devices.chains.table = tables["devices"], tables["personal"]
    assert all(e.devices.evidence.partition(p).model.warm for p, e in devices.engines.items())
    return {"settings": settings, "batches": batches, "crash_at": crash_at, "outputs": outputs,
            "before": before, "writes": writes, "after": tables}


def write_kind(write: tuple) -> tuple[str, str]:
    """(table, kind of row) of a state write: undo entry, seen-filter row, evidence row,
    watermark entry or device row (keys of the first four start with a control prefix)."""
    name, key, _ = write
    key = key.decode() if isinstance(key, bytes) else str(key)
    return name, key.split(":", 1)[0] if key.startswith("\x00") else "device"


def landings(writes: list[tuple], rewind: int) -> list[int]:
    """Prefixes of the state writes to land before the kill. At full scale 40 spread over them
    and both sides of every change from one kind of row to another, where the order of the
    writes matters (every prefix took ~6 CPU minutes). Quick, none and all of them, all but
    the last and, with the offsets committed at the killed batch, the first write of each
    kind of row; two batches earlier, the first commit point (a watermark entry) missing."""
    n = len(writes)
    kinds = [write_kind(write) for write in writes]
    if FULL:
        edges = {i for i in range(1, n) if kinds[i - 1] != kinds[i]}
        return sorted({*range(0, n + 1, max(1, n // 40)), *edges, *(i + 1 for i in edges),
                       1, n - 1, n})
    if rewind:
        commit_point = next(i for i, (_, kind) in enumerate(kinds) if kind == WATERMARK)
        return [0, commit_point, n - 1, n]
    return sorted({0, n - 1, n, *(kinds.index(kind) + 1 for kind in set(kinds))})


@pytest.mark.slow
@pytest.mark.parametrize("rewind", [0, 2])
def test_killed_at_any_state_write_stage1_goes_on_exactly_as_without_the_kill(crash_point,
                                                                            rewind):
    """SIGKILL during a batch's state writes (any prefix of them landed), with the classifier
    on, input offsets committed ``rewind`` batches earlier: the restarted stage 1 publishes,
    from the killed batch on, exactly the records of the run without the kill (the run the
    replay gives: ``test_partitioned_pipeline_with_restarts_equals_replay_on_evidence_links``)
    and ends with exactly its state: every observation counted once, the model taught once
    by each, in the same order."""
    c = crash_point
    crash_at, writes = c["crash_at"], c["writes"]
    assert len(writes) > 100
    for landing in landings(writes, rewind):
        tables = copy_tables(c["before"])
        for name, key, value in writes[:landing]:
            if value is None:
                tables[name].pop(key, None)
            else:
                tables[name][key] = value
        devices, rerun = stage1(c["settings"], tables), []
        for batch in c["batches"][crash_at - rewind:]:
            rerun.append(devices.process(batch))
            devices.commit()
        # The killed batch again (nothing from partitions whose writes all landed: their
        # outputs went out before), then exactly what the run without the kill published.
        assert items(rerun[rewind]) <= items(c["outputs"][crash_at]), landing
        assert rerun[rewind + 1:] == c["outputs"][crash_at + 1:], landing
        assert tables == c["after"], landing


def items(outputs: list) -> set[bytes]:
    """Records, merged ones taken apart."""
    def parts(out):
        if out.stream == RATE_UPDATES:
            return [[out.key, u] for u in expand_rate_updates(out.record)]
        if out.stream == CHAINS:
            return expand_chains(out.record)
        return [[out.stream, out.key, out.record]]
    return {orjson.dumps(p, option=orjson.OPT_SORT_KEYS) for out in outputs for p in parts(out)}
