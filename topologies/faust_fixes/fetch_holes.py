"""Records fetched but never handed to the streams: rewind instead of skipping them.

Measured on tansu (tests/test_faults.py, rebalance test, 2 of 4 runs under CPU load): after a
rebalance the worker sought its input partitions to the committed offsets (say 461), yet the
first records the streams got were from the end of the partition (810): a fetch whose result
Faust never delivered (the fetcher is stopped and restarted around table recovery; a
``getmany`` already running in Faust's consumer thread still advances aiokafka's positions) had
moved the positions on. Faust's consumer then took 462..809 for a compaction gap
(``Consumer._add_gap``) and committed over it: 20-60 of 304 barge-ins, and the plays of the
turns in between, lost.

Input and repartition topics are not compacted: records after a hole exist, they were just
never delivered. So when a fetch returns a partition's records starting past the offset Faust
expects next, the partition is sought back to that offset and the records are dropped from
this fetch; they come again with the next one. A hole that is still there right after such a
rewind (transaction markers on real Kafka) is accepted. Changelog topics are left alone
(compaction makes real holes there).

Faust forgets the next offset of a partition sought to offset 0 (``Consumer.seek`` stores 0 as
"unknown"), which is exactly where a worker that took over before any offset was committed
starts (``recovery_seek``). Measured on tansu (SIGKILL test, about 1 run in 4): the first
records of such a partition came from where the killed worker's fetch had been, 32 of 304
barge-ins never processed. ``expect_from`` records those starting offsets so the check holds
there too.

Upstream: no faust-streaming issue filed from here; faust-streaming 0.15.3, aiokafka 0.14.0.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

_MARKER = "_feedback_stream_fetch_holes_original"


def _rewind_holes(thread: Any, consumer: Any, records: dict[Any, list[Any]]) -> None:
    """Drop (and seek back) each partition's records that start past Faust's next offset."""
    faust_consumer = thread.consumer
    changelogs = faust_consumer.app.tables.changelog_topics
    rewound: dict[Any, int] = thread.__dict__.setdefault("_feedback_stream_rewound", {})
    starts = _starts(faust_consumer)
    for tp in list(records):
        batch = records[tp]
        if not batch or tp.topic in changelogs:
            continue
        # Faust's read offset: the committed offset right after a seek, else the last offset
        # handed on; its own gap check accepts anything up to one past it. Unknown after a
        # seek to offset 0: then the start ``expect_from`` recorded must come first.
        expected = faust_consumer._read_offset.get(tp)
        if expected is None and tp in starts:
            expected = starts[tp] - 1
        first = batch[0].offset
        if expected is None or first <= expected + 1:
            rewound.pop(tp, None)
            starts.pop(tp, None)
            continue
        expected = max(expected, starts.get(tp, expected))
        if rewound.get(tp) == (expected, first):
            rewound.pop(tp)  # the same hole again: real (transaction markers), accept it
            continue
        log.warning("input %s[%d]: fetch starts at %d, past the next offset %d to process; "
                    "seeking back", tp.topic, tp.partition, first, expected)
        rewound[tp] = (expected, first)
        del records[tp]
        consumer._fetcher.seek_to(tp, expected)


def _starts(faust_consumer: Any) -> dict[Any, int]:
    """Partition -> first offset to process, for partitions sought where Faust keeps no read
    offset (until their first records are handed on)."""
    starts: dict[Any, int] = faust_consumer.__dict__.setdefault(
        "_feedback_stream_starts", {})
    return starts


def expect_from(faust_consumer: Any, offsets: dict[Any, int]) -> None:
    """Record that the partitions in ``offsets`` were just sought there: their first fetched
    records must start at (or before) those offsets."""
    _starts(faust_consumer).update(offsets)


async def rewind_stranded(consumer: Any) -> list[tuple[Any, int, int]]:
    """Seek back active input partitions whose records were consumed from aiokafka but never
    handed to the streams, when no later fetch will show the hole (call it every few
    seconds; returns (partition, Faust's read offset, aiokafka's position) of each rewind).

    ``_rewind_holes`` sees a hole only in the next fetch that returns records of the
    partition. At the end of a partition there is none. Measured on tansu (SIGKILL test,
    the worker that took over): 7 of 32 runs on a loaded machine stalled for good with input
    waiting (751 records in one dump), every partition active and unpaused, every stream
    buffer empty; with this check, 3 of the next 14 runs logged rewinds ("consumed up to 1033
    but only 86 handed to the streams") and all 14 passed. Here such a partition (position
    more than one past Faust's read offset, unchanged over two calls: records in transit
    between Faust's consumer thread and its streams move within milliseconds) is sought back
    to the read offset, as ``_rewind_holes`` does; the same pair twice after a rewind is
    accepted (transaction markers on real Kafka)."""
    thread = getattr(consumer, "_thread", None)
    aio = getattr(thread, "_consumer", None)
    assignment = getattr(getattr(getattr(aio, "_subscription", None), "subscription", None),
                         "assignment", None)
    if assignment is None or not consumer.flow_active:
        return []
    seen: dict[Any, tuple[int, int]] = consumer.__dict__.setdefault(
        "_feedback_stream_stranded", {})
    done: dict[Any, tuple[int, int]] = consumer.__dict__.setdefault(
        "_feedback_stream_stranded_done", {})
    rewound = []
    for tp in list(consumer._active_partitions or ()):
        if consumer._is_changelog_tp(tp):
            continue
        read = consumer._read_offset.get(tp)
        state = assignment.state_value(tp)
        if read is None or state is None or not state.has_valid_position:
            seen.pop(tp, None)
            continue
        pair = (read, state.position)
        if pair[1] <= read + 1 or done.get(tp) == pair:
            seen.pop(tp, None)
            continue
        if seen.get(tp) != pair:
            seen[tp] = pair  # maybe in transit: look again next time
            continue
        log.warning("input %s[%d]: consumed up to %d but only %d handed to the streams; "
                    "seeking back", tp.topic, tp.partition, pair[1], read)
        seen.pop(tp)
        done[tp] = pair
        await consumer.seek(tp, read)
        rewound.append((tp, *pair))
    return rewound


def install_fetch_hole_rewind() -> None:
    """Wrap Faust's ``AIOKafkaConsumerThread._fetch_records`` (idempotent)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    cls: Any = AIOKafkaConsumerThread
    if getattr(cls, _MARKER, None) is not None:
        return
    original = cls._fetch_records

    async def _fetch_records(self: Any, consumer: Any, active_partitions: Any,
                             timeout: float | None = None,
                             max_records: int | None = None) -> Any:
        records = await original(self, consumer, active_partitions, timeout=timeout,
                                 max_records=max_records)
        if records:
            _rewind_holes(self, consumer, records)
        return records

    setattr(cls, _MARKER, original)
    cls._fetch_records = _fetch_records
