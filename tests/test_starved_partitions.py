"""``faust_fixes.starved_partitions``: an assigned input partition that Faust left out of the
fetch with nothing holding it back is put back; paused partitions, changelogs and partitions
whose stream buffer is still full stay out."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP

from topologies.faust_fixes.starved_partitions import resume_starved

IN = [TP("interactions", p) for p in range(4)]
CHANGELOG = TP("app-device-state-changelog", 0)


class Queue:
    pressure_drop_size = 1638

    def __init__(self, size: int) -> None:
        self.size = size

    def qsize(self) -> int:
        return self.size


def consumer(active: set[Any], paused: set[Any], buffered: set[Any]) -> Any:
    return SimpleNamespace(
        _active_partitions=active, _paused_partitions=paused, _buffered_partitions=buffered,
        assignment=lambda: {*IN, CHANGELOG},
        _is_changelog_tp=lambda tp: tp == CHANGELOG)


def test_left_out_partitions_come_back_unless_something_holds_them() -> None:
    # 0 active; 1 paused (rebalance); 2 buffered with a full buffer; 3 lost from every set.
    c = consumer(active={IN[0]}, paused={IN[1]}, buffered={IN[2]})
    full = Queue(4000)
    assert resume_starved(c, lambda tp: full) == [IN[3]]
    assert c._active_partitions == {IN[0], IN[3]}
    # The buffer drained but its pressure-drop callback never came: 2 comes back too.
    full.size = 10
    assert resume_starved(c, lambda tp: full) == [IN[2]]
    assert c._active_partitions == {IN[0], IN[2], IN[3]} and not c._buffered_partitions
    assert resume_starved(c, lambda tp: full) == []  # nothing left: idempotent


def test_unknown_buffer_keeps_a_buffered_partition_out() -> None:
    c = consumer(active=set(IN), paused=set(), buffered=set())
    c._active_partitions.discard(IN[2])
    c._buffered_partitions.add(IN[2])
    assert resume_starved(c, lambda tp: None) == []
    c._active_partitions = None  # Faust has not computed its active set yet
    assert resume_starved(c, lambda tp: None) == []
