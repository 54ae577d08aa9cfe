"""Per-device session state: turns still inside their rephrase window, dedupe memory.

State is plain data with ``to_dict``/``from_dict`` so the Kafka topology can keep it in a
changelog-backed table and a restarted worker continues where the last one stopped.

>>> st = DeviceState("d1")
>>> st.pending.append(TurnState("e1", 5, "Play jazz", "play jazz", signals=["barge_in"]))
>>> DeviceState.from_dict(st.to_dict()).pending[0].signals
['barge_in']
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(slots=True)
class TurnState:
    """A turn remembered until it is final (its rephrase window passed)."""

    event_id: str
    ts: int
    utterance: str
    norm: str
    intent: str | None = None
    domain: str | None = None
    device_type: str | None = None
    asr_confidence: float | None = None
    nlu_confidence: float | None = None
    tts_end_ts: int | None = None
    barge_in_ts: int | None = None
    barge_in: str | None = None
    """``device`` | ``timing`` once decided."""
    signals: list[str] = dataclasses.field(default_factory=list)
    chain: list[str] = dataclasses.field(default_factory=list)
    """Event ids of the rephrase chain ending at this turn (root first, this turn last)."""
    chain_norms: list[str] = dataclasses.field(default_factory=list)
    rephrase_of: str | None = None
    rephrased_by: str | None = None
    stop_turn: bool = False
    repeat_flagged: bool = False
    slots: dict[str, str] | None = None
    failure_guess: str | None = None
    """Failure point decided when the turn became final, against its own rephrase: kept when
    its chain does not end in a success to compare with."""
    pair_prev: str | None = None
    """The device's previous request within the window (normalised), for pair evidence."""
    pair_prev_failed: bool = False
    """Whether that request showed a failure independent of rephrase decisions."""
    pair_x: list[float] | None = None
    """What the pair looked like when this turn came: [lexical score, seconds from that
    request's response to this turn, a content-word swap in the same frame (1/0)]."""

    def add_signal(self, signal: str) -> None:
        if signal not in self.signals:
            self.signals.append(signal)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TurnState:
        return cls(**data)


@dataclasses.dataclass(slots=True)
class DeviceState:
    device_id: str
    watermark: int = 0
    """Largest event ts seen for this device."""
    partition: int = 0
    """The input partition its events come from (its pair evidence, ``stream.pairs``)."""
    last_ts: int = 0
    pending: list[TurnState] = dataclasses.field(default_factory=list)
    """Turns not yet final, in arrival order."""
    recent_ids: dict[str, int] = dataclasses.field(default_factory=dict)
    """Event id -> ts of the events within the allowed lateness (at most the dedupe
    capacity), to recognise re-deliveries exactly; older ones are the ``SeenFilter``'s."""
    recent_turns: dict[str, tuple[int, str | None]] = dataclasses.field(default_factory=dict)
    """Finalised turn id -> (ts, utterance), kept for the teach window (plus the allowed
    lateness) so later feedback can refer to it."""
    unknown_turns: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    """(ts, event_id) of unknown-intent / low-NLU-confidence turns in the teach window."""
    unknown_flagged_until: int = 0
    waiting: list[TurnState] = dataclasses.field(default_factory=list)
    """Final defective turns of a rephrase chain still going: their failure point is decided
    in hindsight, when the chain's last turn is final."""
    observations: list[list[Any]] = dataclasses.field(default_factory=list)
    """Final requests waiting to join the pair evidence (``stream.pairs``): [due, previous
    request, request, intent, previous failed, fine, *pair_x of the request]."""
    recent_turns_floor: int = dataclasses.field(default=0, compare=False, repr=False)
    """At most the smallest ts in ``recent_turns`` (0: unknown), so that finalising a turn
    scans them for expired ones only when one can have expired. Derived, not saved."""

    def remember(self, event_id: str, ts: int, horizon: int, capacity: int) -> None:
        """Remember ``event_id``; forget ids older than ``horizon`` (from the oldest
        remembered on: arrival order is ts order up to the lateness) and beyond ``capacity``."""
        ids = self.recent_ids
        ids[event_id] = ts
        while ids:
            oldest = next(iter(ids))  # dicts keep insertion order
            if ids[oldest] >= horizon and len(ids) <= capacity:
                break
            del ids[oldest]

    def find_pending(self, event_id: str) -> TurnState | None:
        for turn in self.pending:
            if turn.event_id == event_id:
                return turn
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "watermark": self.watermark,
            "partition": self.partition,
            "last_ts": self.last_ts,
            "pending": [t.to_dict() for t in self.pending],
            "recent_ids": self.recent_ids,
            "recent_turns": self.recent_turns,
            "unknown_turns": [list(u) for u in self.unknown_turns],
            "unknown_flagged_until": self.unknown_flagged_until,
            "observations": self.observations,
            "waiting": [t.to_dict() for t in self.waiting],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceState:
        return cls(
            device_id=data["device_id"],
            watermark=data["watermark"],
            partition=data.get("partition", 0),
            last_ts=data["last_ts"],
            pending=[TurnState.from_dict(t) for t in data["pending"]],
            # State written before ids kept their ts held a list of ids.
            recent_ids=(dict.fromkeys(data["recent_ids"], data["watermark"])
                        if isinstance(data["recent_ids"], list) else dict(data["recent_ids"])),
            # State written before turns kept their utterance held the ts alone.
            recent_turns={k: (v, None) if isinstance(v, int) else (v[0], v[1])
                          for k, v in data["recent_turns"].items()},
            unknown_turns=[(int(ts), str(eid)) for ts, eid in data["unknown_turns"]],
            unknown_flagged_until=data["unknown_flagged_until"],
            observations=[list(o) for o in data.get("observations", [])],
            waiting=[TurnState.from_dict(t) for t in data.get("waiting", [])],
        )
