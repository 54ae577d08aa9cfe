"""The chunk transport's offset bookkeeping (``topologies.faust_fixes.chunk_transport``), on
Faust's own consumer structures, without a broker: a finished chunk makes every one of its
offsets committable, a chunk the agent never saw makes none. The broker tests
(tests/test_faust_fixes.py, tests/test_faults.py, tests/test_kafka_*.py) run it end to end."""

from __future__ import annotations

import uuid
from typing import Any

import faust
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from topologies.faust_fixes import CHUNK_SCHEME, ChunkMessage, install_chunk_transport
from topologies.faust_fixes.chunk_transport import ChunkConsumer

TOPIC = "in"
TP0 = TP(TOPIC, 0)


def consumer() -> Any:
    install_chunk_transport()
    app = faust.App(f"chunk-unit-{uuid.uuid4().hex[:6]}", broker=f"{CHUNK_SCHEME}://127.0.0.1:1",
                    store="memory://")
    c = app.consumer  # created, never started: no connection
    assert isinstance(c, ChunkConsumer)
    app.topics._acking_topics.add(TOPIC)  # what declaring an agent on the topic does
    return c


def chunk(first: int, last: int, done: bool = True) -> ChunkMessage:
    records = [ConsumerRecord(TOPIC, 0, o, 1_700_000_000_000 + o, 0, b"k", b"{}", None, 1, 2,
                              ()) for o in range(first, last + 1)]
    message = ChunkMessage(TP0, records, generation_id=1)
    message.done = done
    return message


def committable(c: Any) -> dict[Any, int]:
    return c._filter_committable_offsets([TP0])


def test_a_finished_chunk_commits_all_its_offsets_at_once() -> None:
    c = consumer()
    first = chunk(0, 9)
    assert (first.first, first.offset, len(first.records)) == (0, 9, 10)
    assert c.ack(first) is True
    assert not c.ack(first)  # acknowledged once
    assert committable(c) == {TP0: 10}
    c._committed_offset[TP0] = 10
    c.ack(chunk(10, 19))
    assert committable(c) == {TP0: 20}


def test_a_chunk_the_agent_never_saw_commits_nothing() -> None:
    """Faust acknowledges events its stream skips around a rebalance; such a chunk must not
    move the committed offset (it is fetched again after the seek)."""
    c = consumer()
    skipped = chunk(0, 9, done=False)
    c._unacked_messages.add(skipped)
    assert c.ack(skipped) is False
    assert skipped.acked and skipped not in c._unacked_messages  # nobody waits for it
    assert committable(c) == {}


def test_a_chunk_overlapping_the_committed_offset_commits_past_its_end() -> None:
    """A re-delivered chunk starting below the committed offset (a seek back): its offsets
    below that offset are not acked again."""
    c = consumer()
    c._committed_offset[TP0] = 5
    c.ack(chunk(0, 9))
    assert sorted(c._acked[TP0]) == list(range(5, 10))
    assert committable(c) == {TP0: 10}


def test_records_of_other_topics_keep_fausts_acks() -> None:
    c = consumer()
    message = faust.types.tuples.ConsumerMessage(TOPIC, 0, 3, 0.0, 0, None, b"k", b"v", None,
                                                 tp=TP0)
    assert c.ack(message) is True
    assert c._acked[TP0] == [3]


def test_a_chunk_of_several_partitions_commits_each_partitions_offsets() -> None:
    """A fetch's records of all partitions of a topic make one chunk: each partition's offsets
    become committable, from its committed offset on."""
    c = consumer()
    tp1 = TP(TOPIC, 1)
    records = [ConsumerRecord(TOPIC, p, o, 1_700_000_000_000, 0, b"k", b"{}", None, 1, 2, ())
               for p, offsets in ((0, range(0, 3)), (1, range(7, 10))) for o in offsets]
    message = ChunkMessage(tp1, records, generation_id=1)
    assert message.spans == [(TP0, 0, 2), (tp1, 7, 9)]
    c._committed_offset[tp1] = 8
    c.ack(message)  # not done: nothing
    assert c._filter_committable_offsets([TP0, tp1]) == {}
    message = ChunkMessage(tp1, records, generation_id=1)
    message.done = True
    assert c.ack(message) is True
    assert sorted(c._acked[tp1]) == [8, 9]
    assert c._filter_committable_offsets([TP0, tp1]) == {TP0: 3, tp1: 10}
