"""``faust_fixes.fetch_holes``: a fetch that starts past the offset Faust expects next is
sought back (its records were fetched but never delivered), once per hole; changelogs (which
compaction leaves with real holes) are left alone. The end-to-end case that found it is
``tests/test_faults.py::test_rebalances_mid_stream_lose_and_double_count_nothing``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP

from topologies.faust_fixes.fetch_holes import _rewind_holes, expect_from

INPUT, CHANGELOG = TP("interactions", 0), TP("app-device-state-changelog", 0)


class Fetcher:
    def __init__(self) -> None:
        self.seeks: list[tuple[TP, int]] = []

    def seek_to(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


def records(tp: TP, first: int, n: int = 3) -> list[Any]:
    return [SimpleNamespace(offset=o) for o in range(first, first + n)]


def setup(read_offset: dict[TP, int]) -> tuple[Any, Any]:
    app = SimpleNamespace(tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}))
    thread = SimpleNamespace(consumer=SimpleNamespace(app=app, _read_offset=read_offset))
    return thread, SimpleNamespace(_fetcher=Fetcher())


def test_records_past_the_next_offset_are_fetched_again() -> None:
    thread, consumer = setup({INPUT: 461, CHANGELOG: 10})
    fetched = {INPUT: records(INPUT, 810), CHANGELOG: records(CHANGELOG, 50)}
    _rewind_holes(thread, consumer, fetched)
    assert consumer._fetcher.seeks == [(INPUT, 461)]
    assert list(fetched) == [CHANGELOG]  # a changelog's hole is compaction: kept

    # After the rewind the records come from 461: delivered.
    fetched = {INPUT: records(INPUT, 461)}
    _rewind_holes(thread, consumer, fetched)
    assert list(fetched) == [INPUT] and len(consumer._fetcher.seeks) == 1


def test_contiguous_records_and_unknown_positions_pass() -> None:
    thread, consumer = setup({INPUT: 461})
    for first in (460, 461, 462):  # after a seek (461 next) or after handing on 461
        fetched = {INPUT: records(INPUT, first)}
        _rewind_holes(thread, consumer, fetched)
        assert list(fetched) == [INPUT]
    thread, consumer = setup({})  # nothing read yet (just assigned): Faust seeks itself
    fetched = {INPUT: records(INPUT, 900)}
    _rewind_holes(thread, consumer, fetched)
    assert list(fetched) == [INPUT] and not consumer._fetcher.seeks


def test_a_hole_still_there_after_the_rewind_is_real() -> None:
    # Transaction markers on real Kafka: the records after them start 2 past the last one.
    thread, consumer = setup({INPUT: 461})
    fetched = {INPUT: records(INPUT, 463)}
    _rewind_holes(thread, consumer, fetched)
    assert not fetched and consumer._fetcher.seeks == [(INPUT, 461)]
    fetched = {INPUT: records(INPUT, 463)}
    _rewind_holes(thread, consumer, fetched)
    assert list(fetched) == [INPUT] and len(consumer._fetcher.seeks) == 1


def test_partitions_sought_to_offset_0_must_start_there() -> None:
    """Faust keeps no read offset for a partition sought to 0 (a worker taking over before any
    commit): the start recorded by ``expect_from`` is checked instead, until records pass."""
    thread, consumer = setup({})
    expect_from(thread.consumer, {INPUT: 0})
    fetched = {INPUT: records(INPUT, 749)}  # where the killed worker's fetch had been
    _rewind_holes(thread, consumer, fetched)
    assert not fetched and consumer._fetcher.seeks == [(INPUT, 0)]
    fetched = {INPUT: records(INPUT, 0)}
    _rewind_holes(thread, consumer, fetched)
    assert list(fetched) == [INPUT] and len(consumer._fetcher.seeks) == 1
    # Handed on: Faust's own read offset takes over, the recorded start is gone.
    thread.consumer._read_offset[INPUT] = 2
    fetched = {INPUT: records(INPUT, 3)}
    _rewind_holes(thread, consumer, fetched)
    assert list(fetched) == [INPUT] and len(consumer._fetcher.seeks) == 1


class PartitionState:
    def __init__(self, position: int) -> None:
        self.position = position
        self.has_valid_position = True


def stranded_consumer(read: dict[TP, int], positions: dict[TP, int]) -> Any:
    """A Faust consumer whose aiokafka consumer is at ``positions``; ``seek`` records."""
    states = {tp: PartitionState(p) for tp, p in positions.items()}
    assignment = SimpleNamespace(state_value=states.get)
    aio = SimpleNamespace(_subscription=SimpleNamespace(
        subscription=SimpleNamespace(assignment=assignment)))
    seeks: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))
        states[tp].position = offset

    return SimpleNamespace(_thread=SimpleNamespace(_consumer=aio), flow_active=True,
                           _active_partitions={*read}, _read_offset=read, seek=seek,
                           seeks=seeks, states=states,
                           _is_changelog_tp=lambda tp: tp.topic == CHANGELOG.topic)


def test_records_consumed_but_never_handed_on_are_fetched_again() -> None:
    """The end of a partition: no later fetch shows the hole; two looks at the same gap
    between aiokafka's position and Faust's read offset seek back (once per gap)."""
    import asyncio

    from topologies.faust_fixes.fetch_holes import rewind_stranded

    other = TP("interactions", 1)
    consumer = stranded_consumer({INPUT: 1141, other: 279, CHANGELOG: 5},
                                 {INPUT: 1892, other: 280, CHANGELOG: 90})
    assert asyncio.run(rewind_stranded(consumer)) == []  # maybe in transit: look again
    assert asyncio.run(rewind_stranded(consumer)) == [(INPUT, 1141, 1892)]
    assert consumer.seeks == [(INPUT, 1141)]  # the contiguous one and the changelog stay
    # Handed on after the rewind: nothing to do; the same gap again after a rewind is
    # accepted (a real hole: transaction markers).
    consumer._read_offset[INPUT] = 1891
    consumer.states[INPUT].position = 1892
    assert asyncio.run(rewind_stranded(consumer)) == []
    consumer._read_offset[INPUT], consumer.states[INPUT].position = 1141, 1892
    assert [asyncio.run(rewind_stranded(consumer)) for _ in range(3)] == [[], [], []]
    assert len(consumer.seeks) == 1
    # No rewind while the flow is stopped (a rebalance): positions are being reset.
    consumer._read_offset[other], consumer.states[other].position = 100, 280
    consumer.flow_active = False
    assert [asyncio.run(rewind_stranded(consumer)) for _ in range(2)] == [[], []]
