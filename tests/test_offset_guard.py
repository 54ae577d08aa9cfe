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



class FakeMembership:
    """The consumer's (generation, member id), as aiokafka's group coordinator holds it."""

    def __init__(self, generation: int, member_id: str) -> None:
        self.now = (generation, member_id)

    def __call__(self) -> tuple[int, str]:
        return self.now


def test_a_rejoin_at_a_higher_generation_is_a_rebalance_not_a_lost_group():
    group, member = FakeGroup(), FakeMembership(0, "a")
    guard = OffsetGuard("in", group.fetch, member)
    offsets = {TP("in", 0): 10}
    assert run(guard.guarded_commit(offsets, group.committer(offsets)))
    member.now = (1, "a")  # another worker joined
    assert run(guard.guarded_commit({TP("in", 0): 11}, group.committer({TP("in", 0): 11})))
    member.now = (-1, "")  # dropped (session timeout), not joined yet
    guard.check_membership()
    member.now = (3, "b")  # rejoined under a new member id, later generation
    assert run(guard.guarded_commit({TP("in", 0): 12}, group.committer({TP("in", 0): 12})))
    assert guard.member == (3, "b") and len(group.commits) == 3


@pytest.mark.parametrize("generation", [0, 2])
def test_a_rejoin_at_the_same_or_an_older_generation_gets_no_commit(generation):
    """The restarted embedded broker starts the group at generation 0 again: caught even when
    this worker never committed (no offsets to compare)."""
    group, member = FakeGroup(), FakeMembership(2, "a")
    guard = OffsetGuard("in", group.fetch, member)
    guard.check_membership()  # at the first assignment
    member.now = (generation, "b")
    offsets = {TP("in", 0): 10}
    with pytest.raises(BrokerLostOffsets, match=f"generation {generation} after generation 2"):
        run(guard.guarded_commit(offsets, group.committer(offsets)))
    assert group.commits == [] and group.fetches == []
