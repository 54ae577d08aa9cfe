"""Implicit-feedback detectors: one class per signal, registered in ``DETECTORS``.

Stage 1 (``stream.devices.DeviceStage``) puts every new turn of a device in place among the
device's pending turns and hands a ``TurnContext`` to each registered detector, in order. A
detector marks signals on turns (they end up in ``defects.signals`` and make the turn
defective), emits records through the context, or both. The built-in ones: ``BargeIn``,
``StopFollowUp``, ``Rephrase`` (with ``RephraseScorer``, a small logistic model over text
similarity) and ``UnknownConcept``.

A new signal is one class and one line in ``DETECTORS`` (or ``DeviceStage(detectors=...)``):

>>> from stream.devices import DeviceStage
>>> from stream.schema import Turn
>>> class VolumeComplaint(Detector):
...     # "louder" right after a response: the previous one was hard to hear
...     signal = "volume_complaint"
...     unhappy = True  # failure attribution may blame the result
...
...     def on_turn(self, ctx: TurnContext) -> None:
...         prev = ctx.prev
...         if prev is not None and ctx.turn.norm == "louder" and ctx.turn.ts - prev.ts < 10_000:
...             ctx.mark(prev, self.signal)
>>> stage = DeviceStage(detectors=[*DETECTORS, VolumeComplaint])
>>> for n, text in enumerate(["play jazz", "louder"]):
...     _ = stage.on_turn(Turn(f"e{n}", "d1", 1_700_000_000_000 + n * 3_000, text, text))
>>> [(o.record["event_id"], o.record["signals"]) for o in stage.flush() if o.stream == "defects"]
[('e0', ['volume_complaint'])]

The rephrase scorer (``stream.rephrase_scorer.RephraseScorer``, lexical) decides alone for a
cold start; below its threshold the collaborative pair evidence and its online classifier
(``stream.pairs``, ``stream.pair_model``) can still link the device's previous request.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from stream import records
from stream.pairs import PairEvidence
from stream.records import BARGE_IN, NEGATIVE_FEEDBACK, REPHRASED, STOP_FOLLOWUP, Output
from stream.rephrase_scorer import UNKNOWN_INTENTS, ProbaClassifier, RephraseScorer
from stream.session import DeviceState, TurnState
from stream.settings import Settings
from stream.stats import EngineStats

__all__ = ["DETECTORS", "UNHAPPY_SIGNALS", "UNKNOWN_INTENTS", "BargeIn", "Detector",
           "ProbaClassifier", "Rephrase", "RephraseScorer", "StopFollowUp", "TurnContext",
           "UnknownConcept", "barge_in_source", "failed_visibly", "same_request",
           "teachable_moment"]


@dataclasses.dataclass
class TurnContext:
    """What a detector sees of one new turn: the device's state with the turn already among
    its pending turns (sorted by ts; a late turn takes its place in event time), and where to
    put records and counts."""

    device: DeviceState
    turn: TurnState
    at: int
    """Index of ``turn`` in ``device.pending``."""
    settings: Settings
    stats: EngineStats
    out: list[Output]
    evidence: PairEvidence | None = None
    """The collaborative pair evidence of the device's input partition (``stream.pairs``)."""

    @property
    def prev(self) -> TurnState | None:
        """The device's pending turn just before this one in event time."""
        return self.device.pending[self.at - 1] if self.at else None

    @property
    def later(self) -> TurnState | None:
        """The pending turn just after this one (only for a turn that arrived late)."""
        pending = self.device.pending
        return pending[self.at + 1] if self.at + 1 < len(pending) else None

    def mark(self, turn: TurnState, signal: str) -> None:
        """``turn`` carries ``signal``: it is defective when it becomes final."""
        turn.add_signal(signal)

    def emit(self, output: Output) -> None:
        self.out.append(output)

    def teachable(self, reason: str, event_ids: list[str], utterance: str | None,
                  ts: int) -> None:
        """A ``teachable-moments`` record of this device."""
        teachable_moment(self.stats, self.out, self.device.device_id, reason, event_ids,
                         utterance, ts)


def teachable_moment(stats: EngineStats, out: list[Output], device_id: str, reason: str,
                     event_ids: list[str], utterance: str | None, ts: int,
                     **extra: Any) -> None:
    stats.signals["teachable_moment"] += 1
    out.append(records.teachable_moment(device_id, reason, event_ids, utterance, ts, **extra))


class Detector:
    """One implicit-feedback signal. Subclass it, set ``signal`` (the name that lands in
    ``defects.signals``; also the teachable-moment reason of detectors that only teach) and
    ``unhappy`` (True when the signal means the user disliked the response: failure
    attribution then blames the result if nothing else explains the defect), implement
    ``on_turn``, and register the class (see the module docstring)."""

    signal: ClassVar[str] = ""
    unhappy: ClassVar[bool] = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def on_turn(self, ctx: TurnContext) -> None:
        raise NotImplementedError


def failed_visibly(turn: TurnState, settings: Settings) -> bool:
    """A failure signal of ``turn`` that does not depend on any rephrase decision: it was
    interrupted, a stop turn or negative feedback followed it, its intent is unknown or a
    confidence is low. What pair evidence counts (``stream.pairs``)."""
    return bool(
        turn.barge_in or STOP_FOLLOWUP in turn.signals or NEGATIVE_FEEDBACK in turn.signals
        or turn.intent in UNKNOWN_INTENTS
        or (turn.nlu_confidence is not None
            and turn.nlu_confidence < settings.low_nlu_confidence)
        or (turn.asr_confidence is not None
            and turn.asr_confidence < settings.low_asr_confidence))


def barge_in_source(prev: TurnState, next_ts: int | None,
                    max_gap_ms: int | None = None) -> str | None:
    """``device`` when the device reported an interruption; ``timing`` when the same device's
    next turn started before the previous response finished speaking (and, with
    ``max_gap_ms``, at most that long after the previous turn: a turn may be final after
    that, and then whether a later turn still sees it would depend on other devices' events).

    >>> prev = TurnState("e", 0, "u", "u", tts_end_ts=60_000, barge_in_ts=None)
    >>> barge_in_source(prev, 3_000), barge_in_source(prev, 50_000, max_gap_ms=45_000)
    ('timing', None)
    """
    if prev.barge_in_ts is not None:
        return "device"
    if (next_ts is not None and prev.tts_end_ts is not None and next_ts < prev.tts_end_ts
            and (max_gap_ms is None or next_ts - prev.ts <= max_gap_ms)):
        return "timing"
    return None


class BargeIn(Detector):
    """The user interrupted the response: reported by the device (``barge_in_ts``) or seen in
    the timing (the next turn started before the response finished)."""

    signal = BARGE_IN
    unhappy = True

    def on_turn(self, ctx: TurnContext) -> None:
        prev, new, later = ctx.prev, ctx.turn, ctx.later
        window = ctx.settings.rephrase_window_ms
        if (prev is not None and prev.barge_in is None
                and barge_in_source(prev, new.ts, window)):
            self._record(ctx, prev, "timing")
        if new.barge_in_ts is not None:
            self._record(ctx, new, "device")
        elif later is not None and barge_in_source(new, later.ts, window):
            self._record(ctx, new, "timing")

    def _record(self, ctx: TurnContext, turn: TurnState, source: str) -> None:
        turn.barge_in = source
        ctx.mark(turn, self.signal)
        ctx.stats.signals["barge_in"] += 1
        ctx.emit(records.barge_in(ctx.device.device_id, turn, source))


class StopFollowUp(Detector):
    """A stop phrase ("stop", "cancel", "no", ...) within ``stop_followup_ms`` of the
    previous turn."""

    signal = STOP_FOLLOWUP
    unhappy = True

    def on_turn(self, ctx: TurnContext) -> None:
        prev, new = ctx.prev, ctx.turn
        if (new.stop_turn and prev is not None and not prev.stop_turn
                and 0 <= new.ts - prev.ts <= self.settings.stop_followup_ms):
            ctx.mark(prev, self.signal)


class UnknownConcept(Detector):
    """``teach_unknown_count`` unknown-intent or low-NLU-confidence turns of one device
    within ``teach_window_ms``: a teachable moment (the turns are not marked)."""

    signal = "unknown_concept"

    def on_turn(self, ctx: TurnContext) -> None:
        s, st, new = self.settings, ctx.device, ctx.turn
        if not (new.intent in UNKNOWN_INTENTS or (
                new.nlu_confidence is not None and new.nlu_confidence < s.low_nlu_confidence)):
            return
        horizon = new.ts - s.teach_window_ms
        st.unknown_turns = [u for u in st.unknown_turns if u[0] >= horizon]
        st.unknown_turns.append((new.ts, new.event_id))
        if len(st.unknown_turns) >= s.teach_unknown_count and (
                new.ts >= st.unknown_flagged_until):
            ids = [eid for _, eid in st.unknown_turns]
            ctx.teachable(self.signal, ids, new.utterance, new.ts)
            st.unknown_flagged_until = new.ts + s.teach_window_ms
            st.unknown_turns = []


REACTION_MS = 20_000
"""Evidence links only a request that came soon after the previous response ended (or
interrupted it): a restatement is a reaction; a request after listening for a while is not."""
FRAME_OVERLAP = 0.3
"""A swap of content words with at least this word overlap is a new slot value in the same
frame ("add milk to my list" -> "add eggs to my list"): never linked on evidence alone."""


def same_request(a: TurnState, b: TurnState) -> bool:
    """``b`` got what ``a`` got: the same known intent and the same slot values (none on both
    counts as the same). Asked again in other words as a reaction to ``a``'s response, this
    says ``a``'s answer did not give it, even when nothing else showed a failure (a confident
    wrong result): the user would not ask again for what they just got. The same words again
    are linked by the lexical scorer already; this links the restatement the scorer cannot see
    ("wake me up at seven" -> "set an alarm for 7 am", both ``alarm`` with ``time=7:00``). A
    new value in the same frame ("add milk" -> "add eggs") has other slots, or is a swap the
    caller rules out."""
    return (a.intent is not None and a.intent == b.intent and a.intent not in UNKNOWN_INTENTS
            and (a.slots or None) == (b.slots or None))


def new_value(a: TurnState, b: TurnState) -> bool:
    """``b`` got the intent ``a`` got with other slot values ("play jazz" -> "play prince",
    both ``PlayMusic``): after an ``a`` that did not visibly fail, a new request in the same
    frame as NLU saw it, which the evidence rules never link (the lexical swap guard's
    counterpart for requests in other words)."""
    return (a.intent is not None and a.intent == b.intent and bool(a.slots) and bool(b.slots)
            and a.slots != b.slots)


class Rephrase(Detector):
    """The user said it again: a later turn within ``rephrase_window_ms`` that restates an
    earlier one (``RephraseScorer``). The original is marked ``rephrased``; the chain grows
    (``rephrase-chains``, rewrite mining); ``teach_repeat_count`` attempts are a teachable
    moment."""

    signal = REPHRASED

    def __init__(self, settings: Settings, scorer: RephraseScorer | None = None) -> None:
        super().__init__(settings)
        self.scorer = scorer or RephraseScorer.from_settings(settings)
        self._lexical: tuple[TurnState, TurnState, dict[str, float], float] | None = None
        """(previous request, new turn, features, score) of the last pair noted: scored once."""

    def on_turn(self, ctx: TurnContext) -> None:
        if ctx.turn.stop_turn:
            return
        self._note_previous(ctx)
        self._match(ctx, later=False)
        if ctx.later is not None:
            self._match(ctx, later=True)

    def _note_previous(self, ctx: TurnContext) -> None:
        """Remember the device's previous request within the window (stop turns skipped),
        whether it failed visibly and what the pair looks like: the pair is observed when
        the new turn is final (``stream.pairs``)."""
        new, pending = ctx.turn, ctx.device.pending
        for i in range(ctx.at - 1, -1, -1):
            a = pending[i]
            if new.ts - a.ts > self.settings.rephrase_window_ms:
                return
            if not a.stop_turn:
                new.pair_prev = a.norm
                new.pair_prev_failed = failed_visibly(a, self.settings)
                if a.rephrased_by is not None and not (ctx.evidence and ctx.evidence.learn):
                    return  # no candidate and no model to teach: nothing to score
                x = self.scorer.features(a, new.norm, new.intent, new.ts - a.ts, new.domain)
                p = self.scorer.predict_proba_one(x)[True]
                self._lexical = (a, new, x, p)
                # Rounded: the same value in the replay and in a device state read back.
                new.pair_x = [round(p, 4), round((new.ts - (a.tts_end_ts or a.ts)) / 1000, 3),
                              float(bool(x["swap"] and x["token"] >= FRAME_OVERLAP))]
                return

    def _score(self, ctx: TurnContext, orig: TurnState, turn: TurnState) -> float:
        """The lexical scorer; below its threshold, for the device's previous request that
        it answered soon after the response (a reaction), the collaborative evidence of the
        pair (its online classifier once warm, else its rules) can still link them."""
        cached = self._lexical
        if cached is not None and cached[0] is orig and cached[1] is turn:
            x, p = cached[2], cached[3]
        else:
            x = self.scorer.features(orig, turn.norm, turn.intent, turn.ts - orig.ts,
                                     turn.domain)
            p = self.scorer.predict_proba_one(x)[True]
        if (p >= self.scorer.threshold or turn.pair_prev != orig.norm or turn.pair_x is None
                or turn.ts - (orig.tts_end_ts or orig.ts) > REACTION_MS):
            return p
        if same_request(orig, turn) and (not turn.pair_x[2] or orig.slots):
            # A word swap is a new value in the same frame ("add milk" -> "add eggs") unless
            # NLU found the same slot values in both: then the swapped words were not one.
            return self.scorer.threshold
        if ctx.evidence is None:
            return p
        evidence = ctx.evidence.decide(orig.norm, turn.norm, turn.intent,
                                       failed_visibly(orig, self.settings), turn.pair_x,
                                       new_value(orig, turn), orig.intent)
        # A link on evidence is published with the evidence's probability (the model's is of
        # a hindsight label, lower than a rephrase probability), at least the threshold.
        return max(p, evidence, self.scorer.threshold) if evidence else p

    def _match(self, ctx: TurnContext, later: bool) -> None:
        """Link the new turn to the earlier pending turn it most likely restates, or (``later``:
        a turn that arrived late) to the later turn that most likely restates it and is not a
        rephrase of anything yet. Links already made are kept: records are never withdrawn."""
        new, window, pending = ctx.turn, self.settings.rephrase_window_ms, ctx.device.pending
        candidates = pending[ctx.at + 1:] if later else reversed(pending[:ctx.at])
        best: tuple[float, TurnState, TurnState] | None = None
        for cand in candidates:
            orig, rephrase = (new, cand) if later else (cand, new)
            if rephrase.ts - orig.ts > window:
                break
            if cand.stop_turn or (cand.rephrase_of if later else cand.rephrased_by) is not None:
                continue
            p = self._score(ctx, orig, rephrase)
            if p >= self.scorer.threshold and (best is None or p > best[0]):
                best = (p, orig, rephrase)
        if best is not None:
            self._link(ctx, best[1], best[2], best[0])

    def _link(self, ctx: TurnContext, orig: TurnState, new: TurnState, score: float) -> None:
        """``new`` rephrases ``orig``: ``orig`` is defective and the chain grows. ``new`` may
        already head a chain of its own (a late ``orig``): every turn of it gets the prefix."""
        st = ctx.device
        orig.rephrased_by = new.event_id
        ctx.mark(orig, self.signal)
        new.rephrase_of = orig.event_id
        turns = _chain_from(st, new)  # new and what already rephrases it (a late orig)
        tip = turns[-1]
        flagged = orig.repeat_flagged or any(t.repeat_flagged for t in turns)
        for turn in turns:
            turn.chain = orig.chain + turn.chain
            turn.chain_norms = orig.chain_norms + turn.chain_norms
        ctx.stats.signals["rephrase"] += 1
        ctx.emit(records.rephrase(st.device_id, orig, new, score))
        repeated = not flagged and len(tip.chain) >= self.settings.teach_repeat_count
        for turn in turns:
            turn.repeat_flagged = flagged or repeated
        if repeated:
            root_turn = st.find_pending(orig.chain[0])
            ctx.teachable("repeated_request", list(tip.chain),
                          root_turn.utterance if root_turn else orig.utterance, tip.ts)


def _chain_from(st: DeviceState, turn: TurnState | None) -> list[TurnState]:
    """``turn`` and the pending turns that rephrase it, in chain order."""
    chain = []
    while turn is not None:
        chain.append(turn)
        turn = st.find_pending(turn.rephrased_by) if turn.rephrased_by else None
    return chain


DETECTORS: list[type[Detector]] = [BargeIn, StopFollowUp, Rephrase, UnknownConcept]
"""The detectors every ``DeviceStage`` runs, in this order, on each new turn."""

UNHAPPY_SIGNALS = frozenset({NEGATIVE_FEEDBACK, *(d.signal for d in DETECTORS if d.unhappy)})
"""Signals that say the user disliked the response (explicit negative feedback included)."""
