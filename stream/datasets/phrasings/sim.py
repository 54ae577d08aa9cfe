"""Simulation of a population asking for goals in real phrasings: sessions of episodes drawn
device by device, merged into one ts-ordered log, each event with its truth.

An episode is one goal: the device says one of the goal's phrasings (its habit, or one drawn by
popularity); a failed turn is followed by another phrasing of the goal (sometimes the same one
again), possibly interrupting the response or after a "stop", until one succeeds or the user
gives up (stop, negative feedback, barge-in, or silence). Successes get small-talk or
related-goal follow-ups (new requests, not rephrases); there are out-of-scope requests and
false wakes. Personal devices have a goal whose global fix fails for them and a phrasing of
their own that works. Truth follows the detector's signal definitions (as the synthetic
generator's does) plus what only a generator knows: the goal, whether a turn really failed
and where (``failure_point``); ``session.py`` holds the records and turns them into events and
truth.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Iterator
from typing import Any

from stream.datasets.phrasings.population import (
    ENTITIES,
    Goal,
    Phrasing,
    build_goals,
    out_of_scope,
    small_talk,
)
from stream.datasets.phrasings.session import Device, Session, Turn, finish
from stream.text import normalize

BASE_TS = 1_717_200_000_000
REPHRASE_WINDOW_MS = 45_000
SESSION_GAP_MIN_MS = 120_000  # sessions further apart than every window: truth per session
STOPS = ("stop", "cancel", "never mind", "no", "forget it", "cancel that", "stop it")
FRAGMENTS = ("hey", "okay", "what", "play", "so", "um", "yeah", "hello", "the", "set", "and")
POINTS_ANYWHERE = ("asr", "nlu", "entity_resolution", "result")


@dataclasses.dataclass(frozen=True)
class Probs:
    personal_device: float = 0.08  # a device whose fix for one goal differs from the global one
    habit: float = 0.6  # a device says its habitual phrasing of a goal
    favourite: float = 0.3  # an episode is one of the device's favourite goals
    rephrase: float = 0.8  # a failed first attempt is followed by another attempt ...
    rephrase_later: float = 0.6  # ... a failed later one
    max_attempts: int = 4
    same_again: float = 0.15  # the next attempt repeats the failed phrasing (0.4 after `result`)
    interrupt: float = 0.4  # the next attempt interrupts the failed response ...
    device_barge_in: float = 0.8  # ... and the device reports it (else: timing only)
    via_stop: float = 0.1  # "stop" between a failed attempt and the next one
    success_barge_in: float = 0.02  # the user cuts a good answer short (defective, correct)
    small_talk: float = 0.12
    related: float = 0.12  # another goal of the same domain soon after a success
    out_of_scope: float = 0.04
    oos_repeat: float = 0.25
    false_wake: float = 0.03
    negative_feedback: float = 0.1  # on a failed attempt that is rephrased anyway
    positive_feedback: float = 0.03
    surface_noise: float = 0.1


class Population:
    """Goals, devices and the event stream of one population (``events``)."""

    def __init__(self, n_devices: int, seed: int = 0, split: str = "all",
                 probs: Probs | None = None) -> None:
        self.r, self.p = random.Random(seed), probs or Probs()
        self.goals = build_goals(self.r, split)
        self.by_name = {g.name: g for g in self.goals}
        self.goal_weights = [g.weight for g in self.goals]
        self.small_talk, self.oos = small_talk(), out_of_scope()
        self.devices = [self._device(i) for i in range(n_devices)]

    def _device(self, i: int) -> Device:
        r = self.r
        kind = r.choices(("speaker", "screen", "car", "tv"), (55, 20, 15, 10))[0]
        dev = Device(f"ph{i:05d}", kind,
                     r.choice(("en-US", "en-GB", "en-CA")), f"u{r.getrandbits(32):08x}",
                     r.choices(self.goals, self.goal_weights, k=r.randint(0, 3)), {}, {},
                     BASE_TS + r.randint(0, 3_600_000), 2_400_000.0)
        if r.random() < self.p.personal_device:
            goal = r.choice(self.goals)
            broken = [p for p in goal.phrasings if p.failure]
            own = [p for p in goal.phrasings if p is not goal.best and not p.failure]
            if broken and own:
                dev.personal[goal.name] = (r.choice(broken), r.choice(own))
                dev.habits[goal.name] = dev.personal[goal.name][0]
                dev.favourites += [goal] * 6  # "a device always says ...": a heavy user of it
                dev.gap_mean_ms /= 4
        return dev

    # --- one turn ----------------------------------------------------------------------------
    def _turn(self, S: Session, ts: int, kind: str, text: str, intent: str | None,
              domain: str | None, slots: dict[str, str] | None, response: str | None,
              asr: float, nlu: float) -> Turn:
        r, dev = self.r, S.dev
        if r.random() < self.p.surface_noise:
            text = text[0].upper() + text[1:] + r.choice(("?", ".", "!"))
        ev: dict[str, Any] = {"type": "turn", "event_id": dev.new_id(), "device_id": dev.id,
                              "ts": ts, "user_id": dev.user, "session_id": S.id,
                              "utterance": text, "asr_confidence": round(asr, 3)}
        if domain:
            ev["domain"] = domain
        if intent:
            ev.update(intent=intent, nlu_confidence=round(nlu, 3))
        if slots:
            ev["slots"] = slots
        if response is not None:
            start = ts + r.randint(500, 1500)
            ev.update(response=response, tts_start_ts=start,
                      tts_end_ts=start + r.randint(1500, 6000))
        ev["context"] = {"device_type": dev.kind, "locale": dev.locale}
        T = Turn(ev, kind)
        S.turns.append(T)
        return T

    def _attempt(self, S: Session, ts: int, goal: Goal, ph: Phrasing, kind: str,
                 entity: str | None) -> Turn:
        """One attempt at ``goal`` in phrasing ``ph`` about ``entity`` (the same through an
        episode); its success drawn for this device."""
        r, dev = self.r, S.dev
        p_ok, point = ph.p_success, ph.failure
        mine = dev.personal.get(goal.name)
        if mine is not None:
            if ph is mine[1]:
                p_ok = 0.97
            elif ph is goal.best or ph is mine[0]:
                # For this user the global fix resolves the wrong thing (the seed's Wilkerson).
                p_ok = 0.1
                point = ph.failure or ("entity_resolution" if goal.entity else "result")
        slots = {"entity": entity} if entity else None
        if r.random() < p_ok:
            T = self._turn(S, ts, kind, ph.text, goal.name, goal.domain, slots, "OK.",
                           r.uniform(0.85, 0.99), r.uniform(0.7, 0.99))
        else:
            if point is None:
                options = [p for p in POINTS_ANYWHERE if goal.entity or p != "entity_resolution"]
                point = r.choice(options)
            T = self._failed(S, ts, kind, goal, ph, point, slots)
            T.failure_point = point
        T.goal, T.phrasing, T.personal = goal.name, normalize(ph.text), mine is not None
        return T

    def _failed(self, S: Session, ts: int, kind: str, goal: Goal, ph: Phrasing, point: str,
                slots: dict[str, str] | None) -> Turn:
        r = self.r
        other = r.choice([g for g in self.goals if g is not goal])
        if point == "asr":
            unknown = r.random() < 0.5
            return self._turn(S, ts, kind, ph.misheard, "unknown" if unknown else other.name,
                              None if unknown else other.domain, None,
                              "Sorry, I didn't get that.", r.uniform(0.3, 0.6),
                              r.uniform(0.05, 0.3) if unknown else r.uniform(0.3, 0.6))
        if point == "nlu":
            unknown = r.random() < 0.3
            return self._turn(S, ts, kind, ph.text, "unknown" if unknown else other.name,
                              None if unknown else other.domain, None,
                              "Sorry, I'm not sure." if unknown else "Here's what I found.",
                              r.uniform(0.85, 0.99),
                              r.uniform(0.05, 0.3) if unknown else r.uniform(0.35, 0.85))
        if point == "entity_resolution" and slots:
            wrong = r.choice([e for e in ENTITIES if e != slots["entity"]])
            return self._turn(S, ts, kind, ph.text, goal.name, goal.domain, {"entity": wrong},
                              f"I couldn't find {wrong}.", r.uniform(0.85, 0.99),
                              r.uniform(0.6, 0.95))
        return self._turn(S, ts, kind, ph.text, goal.name, goal.domain, slots,
                          r.choice(("Sorry, something went wrong.", "Here's what I found.")),
                          r.uniform(0.85, 0.99), r.uniform(0.7, 0.99))

    # --- reactions -----------------------------------------------------------------------------
    def _next_ts(self, prev: Turn, lo: int = 500, hi: int = 8000) -> int:
        """When the user speaks next: interrupting the response, or after it."""
        r, ev = self.r, prev.ev
        if "tts_end_ts" in ev and r.random() < self.p.interrupt:
            s, e = ev["tts_start_ts"], ev["tts_end_ts"]
            if r.random() >= self.p.device_barge_in:
                return r.randint(s + 300, e - 200)  # only the timestamps tell
            self._barge(prev)
            return int(ev["barge_in_ts"]) + r.randint(350, 1200)
        return prev.end + r.randint(lo, hi)

    def _barge(self, T: Turn, early: bool = False) -> None:
        ev, r = T.ev, self.r
        s = ev["tts_start_ts"]
        b = r.randint(s + 100, s + 700) if early else r.randint(s + 200, ev["tts_end_ts"] - 300)
        ev["barge_in_ts"], ev["tts_end_ts"] = b, b + r.randint(50, 300)

    def _stop(self, S: Session, prev: Turn) -> Turn:
        used = {T.ev["utterance"] for T in S.turns[-6:] if T.stop}
        text = self.r.choice([s for s in STOPS if s not in used])
        intent = "Cancel" if text.startswith(("cancel", "never", "forget")) else "Stop"
        T = self._turn(S, self._next_ts(prev, 300, 3000), "stop", text, intent, "Global", None,
                       None, self.r.uniform(0.85, 0.99), 0.95)
        T.stop = True
        return T

    def _give_up(self, S: Session, T: Turn) -> None:
        u = self.r.random()
        if u < 0.4:
            self._stop(S, T)
        elif u < 0.7:
            S.feedback.append((T.id, "negative", T.end))
        elif u < 0.9 and "tts_end_ts" in T.ev:
            self._barge(T)
        # else: silence, a failure no signal shows (truth: failed, not defective)

    # --- episodes ------------------------------------------------------------------------------
    def _pick(self, dev: Device, goal: Goal, exclude: Phrasing | None = None) -> Phrasing:
        options = [p for p in goal.phrasings if p is not exclude]
        return self.r.choices(options, [p.weight for p in options])[0]

    def _episode(self, S: Session, ts: int, avoid: set[str], goal: Goal | None = None,
                 depth: int = 0) -> None:
        r, p, dev = self.r, self.p, S.dev
        if goal is None:
            u = r.random()
            if u < p.false_wake:
                return self._false_wake(S, ts)
            if u < p.false_wake + p.out_of_scope:
                return self._out_of_scope(S, ts)
            for _ in range(8):  # the same goal again inside the window would blur the truth
                goal = (r.choice(dev.favourites) if dev.favourites and r.random() < p.favourite
                        else r.choices(self.goals, self.goal_weights)[0])
                if goal.name not in avoid:
                    break
            else:
                ts += REPHRASE_WINDOW_MS
        if goal.name in dev.habits or r.random() < p.habit:
            ph = dev.habits.setdefault(goal.name, self._pick(dev, goal))
        else:
            ph = self._pick(dev, goal)
        entity = r.choice(ENTITIES) if goal.entity else None
        T = self._attempt(S, ts, goal, ph, "request" if depth == 0 else "related", entity)
        chain: str | None = None
        for k in range(1, p.max_attempts + 1):
            if T.failure_point is None:
                return self._after_success(S, T, depth)
            if k == p.max_attempts or r.random() >= (p.rephrase if k == 1 else p.rephrase_later):
                return self._give_up(S, T)
            prev, chain = T, chain or dev.new_id("c")
            prev.chain = chain
            if r.random() < p.negative_feedback:
                S.feedback.append((prev.id, "negative", prev.end))
            ts = (self._next_ts(self._stop(S, prev), 1000, 5000) if r.random() < p.via_stop
                  else self._next_ts(prev))
            mine = dev.personal.get(goal.name)
            same = p.same_again * (2.7 if prev.failure_point == "result" else 1)
            if mine is not None and r.random() < 0.7:
                ph = mine[1]
            elif r.random() >= same:
                ph = self._pick(dev, goal, exclude=ph)
            T = self._attempt(S, ts, goal, ph, "rephrase", entity)
            T.rephrase_of, T.chain = prev.id, chain

    def _after_success(self, S: Session, T: Turn, depth: int) -> None:
        r, p = self.r, self.p
        if r.random() < p.success_barge_in and "tts_end_ts" in T.ev:
            self._barge(T)
            return
        if r.random() < p.positive_feedback:
            S.feedback.append((T.id, "positive", T.end))
        u = r.random()
        if u < p.small_talk:
            intent, text = r.choice(self.small_talk)
            self._turn(S, T.end + r.randint(1000, 15_000), "small_talk", text, intent,
                       "small_talk", None, "That's a good question.", r.uniform(0.85, 0.99),
                       r.uniform(0.6, 0.99))
        elif u < p.small_talk + p.related and depth == 0:
            goal = self.by_name[T.goal or ""]
            related = [g for g in self.goals if g.domain == goal.domain and g is not goal]
            if related:
                self._episode(S, T.end + r.randint(1000, 15_000), {goal.name}, r.choice(related),
                              depth + 1)

    def _out_of_scope(self, S: Session, ts: int) -> None:
        r = self.r
        text = r.choice(self.oos)
        T = None
        for k in range(2):
            T2 = self._turn(S, ts, "out_of_scope", text if k == 0 or r.random() < 0.6
                            else "please " + text, "unknown", None, None,
                            "Sorry, I can't help with that.", r.uniform(0.8, 0.99),
                            r.uniform(0.05, 0.3))
            T2.failure_point = "nlu"
            if T is not None:
                T2.rephrase_of = T.id
                T.chain = T2.chain = T.chain or S.dev.new_id("c")
            T = T2
            if k == 1 or r.random() >= self.p.oos_repeat:
                break
            ts = self._next_ts(T)
        if r.random() < 0.3:
            self._stop(S, T)

    def _false_wake(self, S: Session, ts: int) -> None:
        r = self.r
        T = self._turn(S, ts, "false_wake", r.choice(FRAGMENTS), "unknown", None, None,
                       "Sorry?", r.uniform(0.05, 0.3), r.uniform(0.05, 0.2))
        T.failure_point = "false_wake"
        u = r.random()
        if u < 0.6:
            self._barge(T, early=True)
        elif u < 0.8:
            self._stop(S, T)

    # --- sessions and the merged log -----------------------------------------------------------
    def session(self, dev: Device, start: int) -> list[tuple[int, bytes, dict[str, Any]]]:
        r = self.r
        S = Session(dev, dev.new_id("s"))
        t, episodes = start, 1
        while episodes < 8 and r.random() < 0.55:
            episodes += 1
        for _ in range(episodes):
            recent = {T.goal for T in S.turns if T.goal and t - T.ts <= REPHRASE_WINDOW_MS}
            self._episode(S, t, recent)
            last = S.turns[-1]
            t = last.end + r.randint(3_000, 60_000)
            if last.kind == "false_wake":  # nothing the user says follows a false wake
                t = max(t, last.ts + REPHRASE_WINDOW_MS + 1_000)
        return finish(S)

    def events(self, n_events: int) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
        """At least ``n_events`` events (whole sessions) in non-decreasing ts order."""
        r = self.r
        devices = [(d.next_ts, i) for i, d in enumerate(self.devices)]
        heapq.heapify(devices)
        pending: list[tuple[int, int, bytes, dict[str, Any]]] = []
        made = seq = 0
        while made < n_events and devices:
            start, i = heapq.heappop(devices)
            while pending and pending[0][0] <= start:
                ts, _, line, truth = heapq.heappop(pending)
                yield ts, line, truth
            dev = self.devices[i]
            session = self.session(dev, start)
            for ts, line, truth in session:
                heapq.heappush(pending, (ts, seq, line, truth))
                seq += 1
            made += len(session)
            gap = min(8 * 3_600_000, int(r.expovariate(1 / dev.gap_mean_ms)))
            heapq.heappush(devices, (session[-1][0] + SESSION_GAP_MIN_MS + gap, i))
        while pending:
            ts, _, line, truth = heapq.heappop(pending)
            yield ts, line, truth
