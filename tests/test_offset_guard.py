"""OffsetGuard without a broker: a commit never reaches a broker that lost our offsets.

The broker-level behaviour (restart of the embedded broker under a running worker) is
tests/test_faults_delivery.py::test_broker_restart_is_not_silent."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import pytest

from topologies.faust_fixes.broker_offsets import BrokerLostOffsets, OffsetGuard


class TP(NamedTuple):
    topic: str
    partition: int


class FakeGroup:
    """The broker's committed offsets for the group; records every fetch and commit."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}
        self.fetches: list[list[tuple[str, int]]] = []
        self.commits: list[dict[TP, int]] = []
        self.down = False

    async def fetch(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        if self.down:
            raise ConnectionError("broker down")
        self.fetches.append(tps)
        return {tp: self.offsets.get(tp) for tp in tps}

    def committer(self, offsets: dict[TP, int]):
        async def commit() -> bool:
            self.commits.append(dict(offsets))
            self.offsets.update({(tp.topic, tp.partition): o for tp, o in offsets.items()})
            return True
        return commit


def run(coro):
    return asyncio.run(coro)


def test_first_commit_needs_no_check_later_ones_compare_with_the_broker():
    group = FakeGroup()
    guard = OffsetGuard("in", group.fetch)
    first = {TP("in", 0): 10, TP("in", 1): 5, TP("other", 0): 3}

    async def scenario() -> None:
        assert await guard.guarded_commit(first, group.committer(first))
        assert group.fetches == []  # nothing of ours to verify yet
        second = {TP("in", 0): 20, TP("in", 1): 9}
        assert await guard.guarded_commit(second, group.committer(second))
        assert group.fetches == [[("in", 0), ("in", 1)]]

    run(scenario())
    assert guard.committed == {("in", 0): 20, ("in", 1): 9}
    assert len(group.commits) == 2


def test_broker_that_lost_the_offsets_gets_no_commit():
    group = FakeGroup()
    guard = OffsetGuard("in", group.fetch)
    offsets = {TP("in", 0): 10, TP("in", 1): 5}
    run(guard.guarded_commit(offsets, group.committer(offsets)))
    group.offsets.clear()  # the embedded broker restarted: memory storage
    later = {TP("in", 0): 12, TP("in", 1): 7}
    with pytest.raises(BrokerLostOffsets, match=r"\('in', 0\), \('in', 1\)"):
        run(guard.guarded_commit(later, group.committer(later)))
    assert len(group.commits) == 1 and group.offsets == {}


def test_an_older_offset_on_the_broker_counts_as_lost_a_newer_one_does_not():
    group = FakeGroup()
    guard = OffsetGuard("in", group.fetch)
    offsets = {TP("in", 0): 10}
    run(guard.guarded_commit(offsets, group.committer(offsets)))
    group.offsets[("in", 0)] = 15  # another worker owned the partition meanwhile and went on
    assert run(guard.guarded_commit({TP("in", 0): 16}, group.committer({TP("in", 0): 16})))
    group.offsets[("in", 0)] = 3
    with pytest.raises(BrokerLostOffsets):
        run(guard.guarded_commit({TP("in", 0): 17}, group.committer({TP("in", 0): 17})))


def test_unreachable_broker_skips_the_commit_and_checks_again_next_time():
    group = FakeGroup()
    guard = OffsetGuard("in", group.fetch)
    offsets = {TP("in", 0): 10}
    run(guard.guarded_commit(offsets, group.committer(offsets)))
    group.down = True
    assert not run(guard.guarded_commit({TP("in", 0): 11}, group.committer({TP("in", 0): 11})))
    assert len(group.commits) == 1
    group.down = False
    assert run(guard.guarded_commit({TP("in", 0): 11}, group.committer({TP("in", 0): 11})))
    assert group.offsets[("in", 0)] == 11

