"""Simulation of the synthetic stream: sessions of turns drawn device by device, merged into
one ts-ordered log.

``Simulation`` draws rephrase chains, barge-ins, stop follow-ups, feedback, unknown requests and
hard-negative follow-ups, and derives each event's truth under the detector's rules. The public
entry point is ``stream.datasets.synth.generate``.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Iterator
from typing import Any

import orjson

from stream.datasets.synth import vocab
from stream.datasets.synth.records import Device, Session, Turn


def failure_point(fail: str | None, q: vocab.Req) -> str | None:
    """The component a drawn failure mode breaks: a service error is a ``result`` failure, an
    unknown concept or a systematic wrong intent an ``nlu`` one, a systematic wrong item of the
    right intent (the Wilkerson in Texas) an ``entity_resolution`` one."""
    if fail == "systematic":
        s = vocab.SYSTEMATIC[q.text]
        return "entity_resolution" if s.wrong_intent == s.intent else "nlu"
    return {"asr": "asr", "nlu": "nlu", "repeat": "result", "unknown": "nlu"}.get(fail or "")


class Simulation:
    """Draws sessions device by device; ``events`` merges them into one ts-ordered log."""

    def __init__(self, n_devices: int, n_utterances: int, seed: int, probs: vocab.Probs,
                 session_gap_ms: int = 2_400_000,
                 feedback_delay_ms: int = vocab.FEEDBACK_WINDOW_MS) -> None:
        """``session_gap_ms``: mean idle time between two sessions of a device (exponential,
        capped at 12 times the mean); ``feedback_delay_ms``: latest explicit feedback after
        the response ended."""
        self.r, self.p = random.Random(seed), probs
        self.session_gap_ms, self.feedback_delay_ms = session_gap_ms, feedback_delay_ms
        self.vocab = vocab.vocabulary()[: max(1, n_utterances)]
        total, self.cum = 0.0, []
        for rank in range(len(self.vocab)):
            total += 1.0 / (rank + 1)  # Zipf, exponent 1: a few requests dominate, long tail
            self.cum.append(total)
        self.devices = [self._device(i) for i in range(n_devices)]

    def _zipf(self) -> vocab.Req:
        i = bisect.bisect(self.cum, self.r.random() * self.cum[-1])
        return self.vocab[min(i, len(self.vocab) - 1)]  # float rounding can reach the total

    def _device(self, i: int) -> Device:
        r = self.r
        kind = r.choices(("speaker", "screen", "car", "tv"), (55, 20, 15, 10))[0]
        locale = r.choices(("en-US", "en-GB", "en-CA", "en-IN"), (80, 8, 7, 5))[0]
        users = [f"u{r.getrandbits(32):08x}" for _ in range(r.choice((1, 1, 2, 3)))]
        favourites = [self._zipf() for _ in range(r.randint(0, 3))]
        personal: dict[str, str] = {}
        if r.random() < self.p.personal_device:
            base = "weather in wilkerson" if r.random() < 0.6 else r.choice(list(vocab.SYSTEMATIC))
            personal[base] = vocab.SYSTEMATIC[base].personal
            # Twice: these devices ask it all the time ("a device always says ...").
            favourites += [vocab.systematic_req(base, base)] * 2
        return Device(f"dev{i:05d}", kind, locale, users, personal, favourites,
                      vocab.BASE_TS + r.randint(0, 3_600_000))

    # --- time and turns -------------------------------------------------------------------

    @staticmethod
    def _restates(S: Session, ts: int, q: vocab.Req) -> bool:
        norm = vocab.normalize(q.text)
        for T in reversed(S.turns):
            if ts - T.ts > vocab.REPHRASE_WINDOW_MS:
                return False
            if T.req.key == q.key or vocab.normalize(T.ev["utterance"]) == norm:
                return True
        return False

    def _pick(self, S: Session, ts: int) -> tuple[vocab.Req, int]:
        """A new request that does not restate anything inside the window (else: wait)."""
        r, favs = self.r, S.dev.favourites
        for _ in range(8):
            q = r.choice(favs) if favs and r.random() < 0.3 else self._zipf()
            if not self._restates(S, ts, q):
                return q, ts
        # The last turn is >= 12 s back: now nothing is in range.
        return q, ts + vocab.REPHRASE_WINDOW_MS

    def _intr(self) -> str | None:
        if self.r.random() >= self.p.interrupt:
            return None
        return "device" if self.r.random() < self.p.device_barge_in else "timing"

    def _after(self, prev: Turn, intr: str | None, lo: int, hi: int) -> int:
        """Start of the next turn: ``lo``..``hi`` ms after ``prev`` unless it interrupts it."""
        r, ev = self.r, prev.ev
        if intr and "tts_end_ts" in ev:
            s, e = ev["tts_start_ts"], ev["tts_end_ts"]
            if intr == "timing":  # the device missed it: only the timestamps tell
                return r.randint(s + 300, e - 200)
            self._barge(prev)
            return ev["barge_in_ts"] + r.randint(350, 1200)
        low = max(prev.end + 300, prev.ts + lo)
        return r.randint(low, max(low, prev.ts + hi))

    def _barge(self, T: Turn) -> None:
        ev = T.ev
        b = self.r.randint(ev["tts_start_ts"] + 200, ev["tts_end_ts"] - 300)
        ev["barge_in_ts"], ev["tts_end_ts"] = b, b + self.r.randint(50, 300)  # response cut short

    def _turn(self, S: Session, ts: int, q: vocab.Req, behaviour: str,
              text: str | None = None, fail: str | None = None) -> Turn:
        r, dev = self.r, S.dev
        text = q.text if text is None else text
        if r.random() < self.p.surface_noise:
            text = text[0].upper() + text[1:] + r.choice(("?", ".", "!", ""))
        domain, intent, slots, response = q.domain, q.intent, q.slots, q.response
        asr, nlu = r.uniform(0.82, 0.99), r.uniform(0.7, 0.99)
        if fail == "asr":
            asr, nlu = r.uniform(0.3, 0.65), r.uniform(0.2, 0.7)
            if r.random() < 0.5:
                intent, slots, nlu = "unknown", {}, r.uniform(0.05, 0.35)
            response = r.choice(("Sorry, I didn't catch that.", "Sorry, I couldn't find that."))
        elif fail == "nlu":
            other = vocab.FAMILIES[r.randrange(len(vocab.FAMILIES))]
            domain, intent = ("", "unknown") if r.random() < 0.5 else (other.domain, other.intent)
            slots, nlu = {}, r.uniform(0.1, 0.45)
            response = r.choice(("Sorry, I'm not sure about that.", "Here's what I found."))
        elif fail == "repeat":  # a service error: NLU was right, the answer never came
            response = "Sorry, something went wrong. Please try again."
        elif fail == "systematic":
            s = vocab.SYSTEMATIC[q.text]
            domain, intent, response = s.wrong_domain, s.wrong_intent, s.wrong_response
            slots, nlu = {s.slot: s.value}, r.uniform(0.6, 0.9)
        elif fail == "unknown":
            if r.random() < 0.4:
                domain, intent = vocab.FAMILIES[r.randrange(len(vocab.FAMILIES))][1:3]
            nlu = r.uniform(0.05, 0.29)
        ev: dict[str, Any] = {"type": "turn", "event_id": dev.new_id(), "device_id": dev.id,
                              "ts": ts}
        if S.user:
            ev["user_id"] = S.user
        ev.update(session_id=S.id, utterance=text, asr_confidence=round(asr, 3))
        if domain:
            ev["domain"] = domain
        ev.update(intent=intent, nlu_confidence=round(nlu, 3))
        if slots:
            ev["slots"] = slots
        if response is not None:
            start = ts + r.randint(500, 1500)
            ev.update(response=response, tts_start_ts=start, tts_end_ts=start + min(
                6000, max(1000, 50 * len(response) + r.randint(300, 2500))))
        ev["context"] = {"device_type": dev.kind, "locale": dev.locale,
                         "device_state": "driving" if dev.kind == "car" else S.state}
        if fail is None and intent in ("PlayMusic", "PlayAudiobook", "Pause", "SetTimer"):
            S.state = {"Pause": "paused", "SetTimer": "timer_running"}.get(intent, "playing")
        T = Turn(ev, q, behaviour, failure_point(fail, q))
        S.turns.append(T)
        return T

    # --- behaviours -----------------------------------------------------------------------

    def _episode(self, S: Session, t: int) -> None:
        r, p = self.r, self.p
        if r.random() < p.unknown:
            self._unknown(S, t)
        else:
            q, t = self._pick(S, t)
            sys_ = vocab.SYSTEMATIC.get(q.text) if q.fam == vocab.SYS else None
            if r.random() < (p.systematic_defect if sys_ else p.defect):
                self._defect(S, t, q, sys_)
            else:
                silent = r.random() < p.silent_defect
                T = self._turn(S, t, q, "silent_defect" if silent else "success")
                if silent or r.random() < p.positive_feedback:
                    S.queued.append((T, "satisfaction", "negative" if silent else "positive"))
                self._followups(S, T)
        for T, kind, value in S.queued:  # after the episode: barge-ins may have cut tts_end_ts
            ev = {"type": "feedback", "event_id": S.dev.new_id(), "device_id": S.dev.id,
                  "ts": T.end + r.randint(500, self.feedback_delay_ms), "ref_event_id": T.id,
                  "kind": kind, "value": value}
            S.feedback.append((ev, {"event_id": ev["event_id"], "ref_event_id": T.id,
                                    "kind": kind, "value": value}))
        S.queued.clear()

    def _defect(self, S: Session, t: int, q: vocab.Req,
                sys_: vocab.Systematic | None) -> None:
        r, p = self.r, self.p
        mode = "systematic" if sys_ else r.choices(("asr", "nlu", "repeat"), p.defect_modes)[0]
        text = vocab.corrupt(q.text, r) if mode == "asr" else None
        head = self._turn(S, t, q, "defect", text=text, fail=mode)
        u = r.random()
        if u < p.rephrase:
            self._chain(S, head, mode, via_stop=False)
        elif u < p.rephrase + p.stop:
            if r.random() < p.rephrase_after_stop:
                self._chain(S, head, mode, via_stop=True)
            else:
                self._stop(S, head)
        elif r.random() < 0.5:  # the user gives up: only a barge-in or feedback tells
            self._barge(head)
        else:
            S.queued.append((head, "satisfaction", "negative"))
        if r.random() < p.negative_feedback and (head, "satisfaction", "negative") not in S.queued:
            S.queued.append((head, "satisfaction", "negative"))
        if mode != "repeat" and r.random() < p.teach:
            S.queued.append((head, "teach", sys_.teach if sys_ else f"I meant {q.text}"))

    def _unknown(self, S: Session, t: int) -> None:
        r = self.r
        for _ in range(8):
            text = r.choice(vocab.UNKNOWN)
            q = vocab.Req(text, vocab.UNK, 0, text, "", "unknown", {},
                          "Sorry, I don't know that one.", ("unknown", text))
            if not self._restates(S, t, q):
                break
        else:
            t += vocab.REPHRASE_WINDOW_MS
        head = self._turn(S, t, q, "unknown", fail="unknown")
        if r.random() < self.p.unknown_repeat:
            self._chain(S, head, "unknown", via_stop=False)

    def _attempt(self, dev: Device, q: vocab.Req, mode: str,
                 ok: bool) -> tuple[str, vocab.Req, str | None]:
        """What the user says next: (ASR text, meaning, how it fails or None)."""
        r = self.r
        if mode == "systematic":
            if not ok:
                return q.text if r.random() < 0.7 else "please " + q.text, q, mode
            better = vocab.SYSTEMATIC[q.text].better
            text = dev.personal.get(q.text) or (better[0] if r.random() < 0.8 else r.choice(better))
            return text, vocab.systematic_req(text, q.text), None
        if mode == "asr":
            return (q.text, q, None) if ok else (vocab.corrupt(q.text, r), q, mode)
        if mode == "nlu":  # say it differently: synonym / word order
            f = vocab.FAMILIES[q.fam]
            others = [i for i in range(len(f.phrasings)) if i != q.phr]
            alt = vocab.family_req(q.fam, r.choice(others), q.value) if others else q
            return alt.text, alt, None if ok else mode
        if mode == "unknown" and r.random() < 0.3:
            return "please " + q.text, q, mode
        return q.text, q, None if ok else mode  # exact repeat

    def _chain(self, S: Session, head: Turn, mode: str, via_stop: bool) -> None:
        """1-3 restatements of ``head``, each of the previous attempt; success or give-up."""
        r, p = self.r, self.p
        n = r.randint(1, 2) if mode == "unknown" else 1
        if r.random() < p.long_chain:
            n = r.randint(2, 3)
        success = mode != "unknown" and r.random() < p.chain_success
        head.chain = cid = S.dev.new_id("c")
        prev = head
        for k in range(1, n + 1):
            if (k == 1 and via_stop) or r.random() < 0.08:
                ts = self._after(self._stop(S, prev), None, 1000, 7000)
            else:
                ts = self._after(prev, self._intr(), 2000, 20_000)
            text, q, fail = self._attempt(S.dev, head.req, mode, success and k == n)
            T = self._turn(S, ts, q, "rephrase", text=text, fail=fail)
            T.rephrase_of, T.chain, prev = prev.id, cid, T
        if success:
            if r.random() < p.positive_feedback * 3:
                S.queued.append((prev, "satisfaction", "positive"))
            return
        u = r.random()  # giving up must leave a trace, or the last attempt would look fine
        if u < 0.6:
            self._stop(S, prev)
        elif u < 0.85:
            S.queued.append((prev, "satisfaction", "negative"))
        else:
            self._barge(prev)

    def _stop(self, S: Session, prev: Turn) -> Turn:
        ts = self._after(prev, self._intr(), 1500, 9500)
        used = {vocab.normalize(T.ev["utterance"]) for T in S.turns[-6:] if T.stop}
        text = self.r.choice([s for s in vocab.STOPS if s not in used])
        intent = "Cancel" if text.startswith(("cancel", "never", "no ")) else "Stop"
        return self._turn(S, ts, vocab.Req(text, vocab.STOP, 0, "", "Global", intent, {}, None,
                                           (intent, text)), "stop")

    def _followups(self, S: Session, T: Turn) -> None:
        """Related but different requests: negatives a rephrase detector must not flag."""
        r, prob = self.r, self.p.followup
        while T.req.fam >= 0 and r.random() < prob:
            f = vocab.FAMILIES[T.req.fam]
            if f.name not in vocab.FOLLOW:
                return
            if f.intent == "PlayMusic" and r.random() < self.p.followup_long:
                ts = T.ts + r.randint(60_000, 300_000)  # after listening for a while
                if r.random() < 0.3:
                    stop = vocab.Req("stop", vocab.STOP, 0, "", "Global", "Stop", {}, None,
                                     ("Stop", "stop"))
                    T = self._turn(S, ts, stop, "followup")
                    return
                q = vocab.family_req(T.req.fam, r.randrange(len(f.phrasings)), r.choice(f.values))
            else:
                ts = r.randint(max(T.end + 300, T.ts + 2500), T.ts + 25_000)
                name = r.choice(vocab.FOLLOW[f.name])
                g = vocab.FAMILIES[vocab.FAMILY_INDEX[name]]
                same = (f.name, name) in vocab.SAME_VALUE and r.random() < 0.6
                q = vocab.family_req(vocab.FAMILY_INDEX[name], r.randrange(len(g.phrasings)),
                                T.req.value if same else r.choice(g.values))
            if self._restates(S, ts, q):
                return
            T = self._turn(S, ts, q, "followup")
            prob *= 0.5

    # --- sessions and the merged log -------------------------------------------------------

    def session(self, dev: Device, start: int, budget: int) -> list[tuple[int, bytes, dict]]:
        r = self.r
        user = r.choice(dev.users) if r.random() < 0.9 else None
        S = Session(dev, dev.new_id("s"), user=user)
        t, episodes = start, 1
        while episodes < 8 and r.random() < 0.55:
            episodes += 1
        for _ in range(episodes):
            self._episode(S, t)
            last = S.turns[-1]
            t = max(last.ts + 12_000, last.end + 1000) + r.randint(0, 60_000)
        if len(S.turns) + len(S.feedback) > budget:  # the last few events: one plain turn each
            S = Session(dev, dev.new_id("s"), user=S.user)
            self._turn(S, start, self._pick(S, start)[0], "success")
        return self._finish(S)

    @staticmethod
    def _finish(S: Session) -> list[tuple[int, bytes, dict]]:
        """Serialise a session with the truth its events imply under the detector's rules."""
        rephrased = {T.rephrase_of for T in S.turns if T.rephrase_of}
        turn_ts = {T.id: T.ts for T in S.turns}
        # The detector counts negative feedback toward the label within the rephrase window.
        negative = {ev["ref_event_id"] for ev, _ in S.feedback if ev["value"] == "negative"
                    and ev["ts"] - turn_ts[ev["ref_event_id"]] <= vocab.REPHRASE_WINDOW_MS}
        truths, last_of_chain = [], {}
        for i, T in enumerate(S.turns):
            nxt = S.turns[i + 1] if i + 1 < len(S.turns) else None
            ev = T.ev
            barge = "device" if "barge_in_ts" in ev else (
                "timing" if nxt and nxt.ts < ev.get("tts_end_ts", 0) else None)
            stop_next = nxt is not None and nxt.stop and nxt.ts - T.ts <= vocab.STOP_WINDOW_MS
            on = (barge is not None, T.id in negative, T.id in rephrased, stop_next)
            signals = [name for name, hit in zip(vocab.SIGNALS, on, strict=True) if hit]
            truth = {"event_id": T.id, "device_id": S.dev.id, "barge_in": barge,
                     "rephrase_of": T.rephrase_of, "defective": bool(signals), "signals": signals,
                     "chain_id": T.chain, "chain_outcome": None,
                     "utterance_norm": vocab.normalize(ev["utterance"]), "behaviour": T.behaviour,
                     "failure_point": T.failure_point}
            truths.append(truth)
            if T.chain:
                last_of_chain[T.chain] = truth
        for truth in truths:
            if truth["chain_id"]:
                end = last_of_chain[truth["chain_id"]]
                truth["chain_outcome"] = "failure" if end["defective"] else "success"
        out = [(T.ts, orjson.dumps(T.ev), tr) for T, tr in zip(S.turns, truths, strict=True)]
        out += [(ev["ts"], orjson.dumps(ev), tr) for ev, tr in S.feedback]
        out.sort(key=lambda e: e[0])  # stable: a turn precedes feedback with the same ts
        return out

    def events(self, n_events: int) -> Iterator[tuple[int, bytes, dict]]:
        """Exactly ``n_events`` events in non-decreasing ts order, devices interleaved."""
        r = self.r
        devices = [(d.next_ts, i) for i, d in enumerate(self.devices)]
        heapq.heapify(devices)
        pending: list[tuple[int, int, bytes, dict]] = []
        made = seq = 0
        while made < n_events:
            start, i = heapq.heappop(devices)
            # No session drawn later starts before ``start``: everything up to it is final.
            while pending and pending[0][0] <= start:
                ts, _, line, truth = heapq.heappop(pending)
                yield ts, line, truth
            session = self.session(self.devices[i], start, n_events - made)
            for ts, line, truth in session:
                heapq.heappush(pending, (ts, seq, line, truth))
                seq += 1
            made += len(session)
            gap = min(12 * self.session_gap_ms, int(r.expovariate(1 / self.session_gap_ms)))
            heapq.heappush(devices, (session[-1][0] + vocab.SESSION_GAP_MIN_MS + gap, i))
        while pending:
            ts, _, line, truth = heapq.heappop(pending)
            yield ts, line, truth
