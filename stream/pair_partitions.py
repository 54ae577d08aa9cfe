"""Pair evidence per input partition, fed from and applied to the device states.

Every final request's observation (``stream.pairs.PairEvidence.count``) waits on its device's
state, so it is saved with it, and joins its partition's counts once the partition has seen
an event later than ``ts + window + lateness`` (``PartitionedEvidence.advance``): the request
is final by then in the Kafka worker and in the replay, and the observations of one partition
join in an order that depends on event time only. Why one evidence per partition:
``stream.pairs``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from typing import Any

from stream.pairs import PairEvidence
from stream.session import DeviceState, TurnState


class PartitionedEvidence:
    """``PairEvidence`` per input partition, fed from and applied to the device states."""

    def __init__(self, max_pairs: int, delay_ms: int, learn: bool = False) -> None:
        self.max_pairs = max_pairs
        self.learn = learn
        self.delay_ms = delay_ms
        """Window + allowed lateness: when an observation's request is final everywhere."""
        self.parts: dict[int, PairEvidence] = {}
        self.track = False

    def partition(self, part: int) -> PairEvidence:
        ev = self.parts.get(part)
        if ev is None:
            ev = self.parts[part] = PairEvidence(self.max_pairs, self.learn)
            ev.track = self.track
        return ev

    def observe(self, st: DeviceState, turn: TurnState, fine: bool,
                points: list[list[str]] | None = None) -> None:
        """``turn`` is final: its observation waits on the device until it is due
        (``points``: the hindsight failure points of the chain it ended, ``count``)."""
        due = turn.ts + self.delay_ms
        st.observations.append([due, turn.pair_prev or "", turn.norm, turn.intent or "",
                                int(turn.pair_prev_failed), int(fine), points or [],
                                *(turn.pair_x or ())])
        heapq.heappush(self.partition(st.partition).due, (due, st.device_id))

    def advance(self, ev: PairEvidence, ts: int, devices: Mapping[str, DeviceState],
                touch: Callable[[str], None]) -> None:
        """The partition saw an event at ``ts``: count the observations now due, in an order
        that does not depend on when they were made (due, device, then their own order)."""
        if ts <= ev.clock:
            return
        ev.clock = ts
        due = ev.due
        while due and due[0][0] < ts:
            _, device_id = heapq.heappop(due)
            st = devices.get(device_id)
            waiting = st.observations if st is not None else ev.orphans.pop(device_id, [])
            if not waiting:
                continue
            keep = []
            for obs in sorted(waiting):
                if obs[0] < ts:
                    pair_x, points = _tail(obs)
                    ev.count(obs[1], obs[2], obs[3], bool(obs[4]), bool(obs[5]), pair_x, points)
                else:
                    keep.append(obs)
            if keep:  # still waiting: a pointer of their own (one restored device has one)
                heapq.heappush(due, (keep[0][0], device_id))
            if st is None:
                if keep:
                    ev.orphans[device_id] = keep
                continue
            st.observations = keep
            touch(device_id)

    def advance_all(self, ts: int, devices: Mapping[str, DeviceState],
                    touch: Callable[[str], None]) -> None:
        for ev in self.parts.values():
            self.advance(ev, ts, devices, touch)

    def expire(self, st: DeviceState) -> None:
        """``st`` expires: its waiting observations still count when due."""
        if st.observations:
            self.partition(st.partition).orphans[st.device_id] = st.observations

    def readmit(self, st: DeviceState) -> None:
        """An expired device is back before its old observations were due: they wait on it."""
        ev = self.parts.get(st.partition)
        if ev is not None and st.device_id in ev.orphans:
            st.observations = ev.orphans.pop(st.device_id)

    def import_device(self, st: DeviceState) -> None:
        if st.observations:
            due = min(obs[0] for obs in st.observations)
            heapq.heappush(self.partition(st.partition).due, (due, st.device_id))


def _tail(obs: list[Any]) -> tuple[list[float], list[list[str]]]:
    """(pair_x, hindsight points) of a waiting observation; one saved before observations
    carried points (6 items, or 9 with pair_x) has none.

    >>> _tail([1, "a", "b", "i", 1, 1, [["a", "asr"]], 0.5, 2.0, 0.0])
    ([0.5, 2.0, 0.0], [['a', 'asr']])
    >>> _tail([1, "a", "b", "i", 1, 1, 0.5, 2.0, 0.0])
    ([0.5, 2.0, 0.0], [])
    """
    if len(obs) in (6, 9):
        return obs[6:9], []
    return obs[7:10], obs[6]
