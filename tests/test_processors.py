"""The batch processors of the topology, without a broker: partitioned processing, table
state and restarts give exactly the in-process replay's records."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from stream.engine import FeedbackEngine
from stream.records import CHAINS, DEFECT_RATES, RATE_UPDATES
from stream.settings import Settings
from topologies.processors import DeviceProcessor, Message, RateProcessor, partition_of
from topologies.rewriting import GlobalRewriteProcessor, PersonalRewrites

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample.jsonl"
PARTITIONS = 4


def sample_lines() -> list[bytes]:
    return [line for line in SAMPLE.read_bytes().splitlines() if line.strip()]


def replay_records(lines: list[bytes]) -> tuple[Counter, dict]:
    eng = FeedbackEngine()
    outs = [o for line in lines for o in eng.process(line)] + eng.flush()
    return canonical(outs)


def canonical(outputs) -> tuple[Counter, dict]:
    """Signal records as a multiset (dead letters without their source), and the final
    defect-rate record per key."""
    signals: Counter = Counter()
    rates: dict = {}
    for out in outputs:
        if out.stream == DEFECT_RATES:
            rates[out.key] = out.record
        elif out.stream != RATE_UPDATES:
            record = {k: v for k, v in out.record.items() if k != "source"}
            signals[(out.stream, orjson.dumps(record, option=orjson.OPT_SORT_KEYS))] += 1
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


def run_pipeline(msgs: list[Message], restart_every: int | None = None):
    """All stages as the Faust app wires them, with dicts as tables; ``restart_every``
    messages the processors are replaced by fresh ones over the same tables."""
    settings = Settings(partitions=PARTITIONS)
    tables: dict[str, dict] = {"devices": {}, "rates": {}, "personal": {}, "global": {}}

    def fresh():
        personal = PersonalRewrites(settings, tables["personal"])
        return (DeviceProcessor(settings, tables["devices"], chains=personal),
                RateProcessor(settings, tables["rates"]),
                GlobalRewriteProcessor(settings, tables["global"]))

    devices, rates, rewrites = fresh()
    outputs = []
    rate_offsets = Counter()
    chain_offset = 0
    for start in range(0, len(msgs), 100):
        if restart_every and start and start % restart_every == 0:
            devices, rates, rewrites = fresh()
        updates, chains = [], []
        for out in devices.process(msgs[start:start + 100]):
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
    return outputs, rates, tables["rates"]


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    if not SAMPLE.exists():
        pytest.fail(f"sample stream missing: {SAMPLE}")
    return sample_lines()


def test_partitioned_pipeline_equals_replay(lines):
    expected = replay_records(lines)
    outputs, _, _ = run_pipeline(to_messages(lines))
    assert canonical(outputs) == expected


def test_restarts_continue_from_table_state(lines):
    expected = replay_records(lines)
    outputs, _, _ = run_pipeline(to_messages(lines), restart_every=700)
    assert canonical(outputs) == expected


def test_rate_updates_redelivered_are_not_double_counted():
    settings = Settings(partitions=1)
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
