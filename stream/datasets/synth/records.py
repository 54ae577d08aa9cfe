"""The records ``stream.datasets.synth.sim`` fills: a device, its sessions and their turns."""

from __future__ import annotations

import dataclasses
from typing import Any

from stream.datasets.synth.vocab import STOP, Req


class Turn:
    __slots__ = ("ev", "ts", "id", "req", "stop", "rephrase_of", "chain", "behaviour",
                 "failure_point")

    def __init__(self, ev: dict[str, Any], req: Req, behaviour: str,
                 failure_point: str | None = None) -> None:
        self.ev, self.ts, self.id, self.req = ev, ev["ts"], ev["event_id"], req
        self.stop = req.fam == STOP
        self.rephrase_of: str | None = None
        self.chain: str | None = None
        self.behaviour = behaviour
        self.failure_point = failure_point
        """Where the turn really failed (None: it did not); only the truth carries it."""

    @property
    def end(self) -> int:
        """When the assistant stopped talking (a turn without a response ends soon after ts)."""
        return int(self.ev.get("tts_end_ts", self.ts + 800))


@dataclasses.dataclass
class Device:
    id: str
    kind: str
    locale: str
    users: list[str]
    personal: dict[str, str]  # systematic utterance -> this device's own better phrasing
    favourites: list[Req]
    next_ts: int
    n: int = 0  # events, sessions and chains share one counter: ids stay unique and short

    def new_id(self, tag: str = "") -> str:
        self.n += 1
        return f"{self.id}-{tag}{self.n}"


@dataclasses.dataclass
class Session:
    dev: Device
    id: str
    turns: list[Turn] = dataclasses.field(default_factory=list)
    feedback: list[tuple[dict[str, Any], dict[str, Any]]] = dataclasses.field(default_factory=list)
    queued: list[tuple[Turn, str, str]] = dataclasses.field(default_factory=list)
    user: str | None = None
    state: str = "idle"

