"""What the phrasings simulation records of a session (the device, its turns with what only
the generator knows, the feedback it gives) and its serialisation: the events, each with the
truth it implies under the detector's signal definitions."""

from __future__ import annotations

import dataclasses
import random
import zlib
from typing import Any

import orjson

from stream.datasets.phrasings.population import Goal, Phrasing
from stream.text import normalize

STOP_WINDOW_MS = 10_000
SIGNALS = ("barge_in", "negative_feedback", "rephrased", "stop_followup")


@dataclasses.dataclass
class Device:
    id: str
    kind: str
    locale: str
    user: str
    favourites: list[Goal]
    personal: dict[str, tuple[Phrasing, Phrasing]]  # goal -> (broken habit, own fix)
    habits: dict[str, Phrasing]
    next_ts: int
    gap_mean_ms: float
    n: int = 0

    def new_id(self, tag: str = "") -> str:
        self.n += 1
        return f"{self.id}-{tag}{self.n}"


@dataclasses.dataclass
class Turn:
    ev: dict[str, Any]
    kind: str
    goal: str | None = None
    phrasing: str | None = None
    failure_point: str | None = None
    personal: bool = False
    stop: bool = False
    rephrase_of: str | None = None
    chain: str | None = None

    @property
    def id(self) -> str:
        return str(self.ev["event_id"])

    @property
    def ts(self) -> int:
        return int(self.ev["ts"])

    @property
    def end(self) -> int:
        return int(self.ev.get("tts_end_ts", self.ts + 800))


@dataclasses.dataclass
class Session:
    dev: Device
    id: str
    turns: list[Turn] = dataclasses.field(default_factory=list)
    feedback: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)


def finish(S: Session) -> list[tuple[int, bytes, dict[str, Any]]]:
    """Serialise a session with the truth its events imply under the detector's rules."""
    rephrased = {T.rephrase_of for T in S.turns if T.rephrase_of}
    negative = {ref for ref, value, _ in S.feedback if value == "negative"}
    out: list[tuple[int, bytes, dict[str, Any]]] = []
    chain_end: dict[str, dict[str, Any]] = {}
    truths = []
    for i, T in enumerate(S.turns):
        nxt = S.turns[i + 1] if i + 1 < len(S.turns) else None
        ev = T.ev
        barge = "device" if "barge_in_ts" in ev else (
            "timing" if nxt and nxt.ts < ev.get("tts_end_ts", 0) else None)
        stop_next = (nxt is not None and nxt.stop and not T.stop
                     and nxt.ts - T.ts <= STOP_WINDOW_MS)
        on = (barge is not None, T.id in negative, T.id in rephrased, stop_next)
        signals = [name for name, hit in zip(SIGNALS, on, strict=True) if hit]
        truth = {"event_id": T.id, "device_id": S.dev.id, "barge_in": barge,
                 "rephrase_of": T.rephrase_of, "defective": bool(signals), "signals": signals,
                 "chain_id": T.chain, "chain_outcome": None,
                 "utterance_norm": normalize(ev["utterance"]), "behaviour": T.kind,
                 "goal": T.goal, "phrasing": T.phrasing, "failed": T.failure_point is not None,
                 "failure_point": T.failure_point, "personal": T.personal}
        truths.append(truth)
        if T.chain:
            chain_end[T.chain] = truth
        out.append((T.ts, orjson.dumps(ev), truth))
    for truth in truths:
        if truth["chain_id"]:
            truth["chain_outcome"] = "failure" if chain_end[truth["chain_id"]]["defective"] \
                else "success"
    r = random.Random(zlib.crc32(S.id.encode()))  # str hash() is salted per process
    for n, (ref, value, after) in enumerate(S.feedback):
        ev = {"type": "feedback", "event_id": f"{S.id}-f{n}", "device_id": S.dev.id,
              "ts": after + r.randint(500, 20_000), "ref_event_id": ref,
              "kind": "satisfaction", "value": value}
        out.append((ev["ts"], orjson.dumps(ev), {"event_id": ev["event_id"], "ref_event_id": ref,
                                                  "kind": "satisfaction", "value": value}))
    out.sort(key=lambda e: e[0])  # stable: a turn precedes feedback with the same ts
    return out
