"""Stage 1, keyed by device: barge-ins, rephrases, defect labels and teachable moments.

Everything runs in event time. A turn is *final* once no later turn can still rephrase it:
when its device's watermark (largest ts seen for the device) is more than the rephrase window
past it, when the stream watermark (largest ts of any device minus the allowed lateness, or a
``watermark`` event) passes it by the window, or at end of stream (``flush``). Final turns
produce their ``defects`` record and one ``rate-updates`` record per estimate key.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Any

from stream.changes import ChangeSet
from stream.detectors import UNKNOWN_INTENTS, RephraseScorer, barge_in_source
from stream.failure import FailureThresholds, attribute
from stream.records import (
    BARGE_INS,
    CHAINS,
    DEFECTS,
    RATE_UPDATES,
    REPHRASES,
    TEACHABLE_MOMENTS,
    Output,
    rate_key,
)
from stream.schema import Feedback, Turn
from stream.session import DeviceState, TurnState
from stream.settings import Settings
from stream.stats import EngineStats
from stream.text import is_stop_phrase


class DeviceStage:
    def __init__(
        self,
        settings: Settings | None = None,
        stats: EngineStats | None = None,
        scorer: RephraseScorer | None = None,
        emit_chains: bool = False,
    ) -> None:
        self.s = settings or Settings()
        self.emit_chains = emit_chains
        self.failure_thresholds = FailureThresholds.from_settings(self.s)
        """Emit ``rephrase-chains`` records (the rewrite miner's input) when chains end."""
        self.stats = stats if stats is not None else EngineStats()
        self.scorer = scorer or RephraseScorer(
            threshold=self.s.rephrase_threshold,
            low_asr_confidence=self.s.low_asr_confidence,
            low_nlu_confidence=self.s.low_nlu_confidence,
        )
        # OrderedDict, not dict: taking the oldest entry of a plain dict that keeps losing
        # its front entries scans over their tombstones (quadratic at 100k+ devices).
        self.devices: OrderedDict[str, DeviceState] = OrderedDict()
        """Device states in least-recently-active-first order (for idle expiry)."""
        self.watermark = 0
        """Stream watermark: turns with ts + window < watermark are final."""
        self._deadlines: list[tuple[int, str, str]] = []
        self.position: tuple[int, int] | None = None
        """(input partition, offset) of the message being processed, when it came from Kafka:
        stamped as ``src`` on ``rate-updates`` and ``rephrase-chains`` so that the stages
        behind can recognise the same update re-emitted after a crash (see
        ``topologies.processors.first_application``)."""
        self.changes = ChangeSet()
        """Devices whose state changed or went (for changelog writes; enable to track)."""

    # -- events ----------------------------------------------------------------------------------
    def on_turn(self, turn: Turn) -> list[Output] | str:
        """Outputs of one turn, or a dead-letter reason code (``late``) or ``duplicate``."""
        st, status = self._admit(turn.device_id, turn.event_id, turn.ts)
        if status:
            return status
        out: list[Output] = []
        self._finalize_device(st, st.watermark - self.s.rephrase_window_ms, out)
        new = TurnState(
            turn.event_id, turn.ts, turn.utterance, turn.norm, turn.intent, turn.domain,
            turn.device_type, turn.asr_confidence, turn.nlu_confidence, turn.tts_end_ts,
            turn.barge_in_ts, chain=[turn.event_id], chain_norms=[turn.norm],
        )
        # A turn that arrives late (within the allowed lateness) takes its place in event
        # time: pending stays sorted by ts, and the turns around it are its neighbours.
        pending = st.pending
        at = len(pending)
        while at and pending[at - 1].ts > turn.ts:
            at -= 1
        prev = pending[at - 1] if at else None
        later = pending[at] if at < len(pending) else None
        if prev is not None and prev.barge_in is None and barge_in_source(prev, turn.ts):
            self._barge_in(st, prev, "timing", out)
        if turn.barge_in_ts is not None:
            self._barge_in(st, new, "device", out)
        elif later is not None and barge_in_source(new, later.ts):
            self._barge_in(st, new, "timing", out)
        new.stop_turn = is_stop_phrase(turn.norm)
        if new.stop_turn:
            if (prev is not None and not prev.stop_turn
                    and 0 <= turn.ts - prev.ts <= self.s.stop_followup_ms):
                prev.add_signal("stop_followup")
        else:
            self._match_rephrase(st, new, out)
        if turn.intent in UNKNOWN_INTENTS or (
            turn.nlu_confidence is not None and turn.nlu_confidence < self.s.low_nlu_confidence
        ):
            self._unknown_concept(st, new, out)
        pending.insert(at, new)
        if later is not None and not new.stop_turn:
            self._match_later_rephrase(st, new, at, out)
        heapq.heappush(self._deadlines,
                       (turn.ts + self.s.rephrase_window_ms, turn.device_id, turn.event_id))
        self._advance(turn.ts - self.s.allowed_lateness_ms, out)
        return out

    def on_feedback(self, fb: Feedback) -> list[Output] | str:
        st, status = self._admit(fb.device_id, fb.event_id, fb.ts)
        if status:
            return status
        target = st.find_pending(fb.ref_event_id)
        if target is None and fb.ts - st.recent_turns.get(
                fb.ref_event_id, -self.s.teach_window_ms) > self.s.teach_window_ms:
            # Unknown, or final for longer than the teach window (same rule whatever the
            # partitioning, so replay and Kafka agree).
            return "unknown_turn"
        out: list[Output] = []
        utterance = target.utterance if target is not None else None
        ids = [fb.ref_event_id, fb.event_id]
        if fb.kind == "satisfaction" and fb.value == "negative":
            if target is not None:
                # Counts toward the label only while the turn is not final (documented).
                target.add_signal("negative_feedback")
            self._teachable(fb.device_id, "negative_feedback", ids, utterance, fb.ts, out)
        elif fb.kind == "teach":
            self._teachable(fb.device_id, "user_teaching", ids, utterance, fb.ts, out,
                            teach=fb.value)
        self._finalize_device(st, st.watermark - self.s.rephrase_window_ms, out)
        self._advance(fb.ts - self.s.allowed_lateness_ms, out)
        return out

    def on_watermark(self, ts: int) -> list[Output]:
        out: list[Output] = []
        self._advance(ts, out)
        return out

    def flush(self) -> list[Output]:
        """End of stream: every pending turn becomes final."""
        out: list[Output] = []
        for st in list(self.devices.values()):
            self._finalize_device(st, None, out)
        self._deadlines.clear()
        return out

    # -- internals -------------------------------------------------------------------------------
    def _admit(self, device_id: str, event_id: str, ts: int) -> tuple[DeviceState, str]:
        st = self.devices.get(device_id)
        if st is None:
            st = self.devices[device_id] = DeviceState(device_id)
        else:
            self.devices.move_to_end(device_id)  # most recently active last
        if st.seen(event_id, self.s.dedupe_capacity):
            return st, "duplicate"
        if st.watermark and ts < st.watermark - self.s.allowed_lateness_ms:
            return st, "late"
        if ts > st.watermark:
            st.watermark = ts
        st.last_ts = max(st.last_ts, ts)
        self.changes.touch(device_id)
        return st, ""

    def _advance(self, watermark: int, out: list[Output]) -> None:
        if watermark <= self.watermark:
            return
        self.watermark = watermark
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] < watermark:
            _, device_id, event_id = heapq.heappop(deadlines)
            st = self.devices.get(device_id)
            if st is not None:
                turn = st.find_pending(event_id)
                if turn is not None:
                    st.pending.remove(turn)
                    self._finalize(st, turn, out)
                    self.changes.touch(device_id)
        self._expire_idle(watermark)

    def _expire_idle(self, watermark: int) -> None:
        horizon = watermark - self.s.device_idle_ms
        while self.devices:
            device_id = next(iter(self.devices))
            st = self.devices[device_id]
            if st.last_ts >= horizon or st.pending:
                break
            del self.devices[device_id]
            self.changes.drop(device_id)
            self.stats.evictions["device"] += 1

    def _finalize_device(self, st: DeviceState, before: int | None, out: list[Output]) -> None:
        """Finalise the device's pending turns with ts < ``before`` (all when None)."""
        if not st.pending or (before is not None and st.pending[0].ts >= before):
            return
        keep = []
        for turn in st.pending:
            if before is None or turn.ts < before:
                self._finalize(st, turn, out)
            else:
                keep.append(turn)
        st.pending = keep
        self.changes.touch(st.device_id)

    def _finalize(self, st: DeviceState, turn: TurnState, out: list[Output]) -> None:
        st.recent_turns[turn.event_id] = turn.ts
        horizon = st.watermark - self.s.teach_window_ms
        for eid in [e for e, ts in st.recent_turns.items() if ts < horizon]:
            del st.recent_turns[eid]
        defective = bool(turn.signals)
        if defective:
            rephrase = st.find_pending(turn.rephrased_by) if turn.rephrased_by else None
            failure_point = attribute(turn, rephrase, self.failure_thresholds)
            self.stats.signals["defect"] += 1
            self.stats.failure_points[failure_point] += 1
            out.append(Output(DEFECTS, turn.event_id, {
                "event_id": turn.event_id,
                "device_id": st.device_id,
                "utterance": turn.utterance,
                "signals": sorted(turn.signals),
                "failure_point": failure_point,
                "intent": turn.intent,
                "domain": turn.domain,
                "ts": turn.ts,
            }))
        src = {} if self.position is None else {"src": self.position}
        if self.emit_chains and turn.rephrased_by is None:
            # The tip of a chain (a lone turn is a chain of one): the chain's outcome is known.
            out.append(Output(CHAINS, st.device_id, {
                "device_id": st.device_id, "event_ids": turn.chain,
                "utterances": turn.chain_norms,
                "outcome": "failure" if defective else "success", "ts": turn.ts, **src,
            }))
        for key_type, key in (("utterance", turn.norm), ("intent", turn.intent),
                              ("domain", turn.domain), ("device_type", turn.device_type)):
            if key:
                out.append(Output(RATE_UPDATES, rate_key(key_type, key), {
                    "key_type": key_type, "key": key, "defective": defective,
                    "ts": turn.ts, "event_id": turn.event_id, **src,
                }))

    def _barge_in(self, st: DeviceState, turn: TurnState, source: str,
                  out: list[Output]) -> None:
        turn.barge_in = source
        turn.add_signal("barge_in")
        self.stats.signals["barge_in"] += 1
        out.append(Output(BARGE_INS, turn.event_id, {
            "event_id": turn.event_id, "device_id": st.device_id, "utterance": turn.utterance,
            "intent": turn.intent, "ts": turn.ts, "source": source,
        }))

    def _rephrase_score(self, orig: TurnState, turn: TurnState) -> float:
        x = self.scorer.features(orig, turn.norm, turn.intent, turn.ts - orig.ts, turn.domain)
        return self.scorer.predict_proba_one(x)[True]

    def _match_rephrase(self, st: DeviceState, new: TurnState, out: list[Output]) -> None:
        """Link ``new`` to the earlier pending turn it most likely restates."""
        best: tuple[float, TurnState] | None = None
        for cand in reversed(st.pending):
            gap = new.ts - cand.ts
            if gap > self.s.rephrase_window_ms:
                break
            if gap < 0 or cand.stop_turn or cand.rephrased_by is not None:
                continue
            p = self._rephrase_score(cand, new)
            if p >= self.scorer.threshold and (best is None or p > best[0]):
                best = (p, cand)
        if best is not None:
            self._link(st, best[1], new, best[0], out)

    def _match_later_rephrase(self, st: DeviceState, new: TurnState, at: int,
                              out: list[Output]) -> None:
        """A late ``new`` (at index ``at`` of pending) as the original of a later turn that
        arrived before it and is not a rephrase of anything yet. Links already made are
        kept: records are never withdrawn."""
        best: tuple[float, TurnState] | None = None
        for cand in st.pending[at + 1:]:
            if cand.ts - new.ts > self.s.rephrase_window_ms:
                break
            if cand.stop_turn or cand.rephrase_of is not None:
                continue
            p = self._rephrase_score(new, cand)
            if p >= self.scorer.threshold and (best is None or p > best[0]):
                best = (p, cand)
        if best is not None:
            self._link(st, new, best[1], best[0], out)

    def _link(self, st: DeviceState, orig: TurnState, new: TurnState, score: float,
              out: list[Output]) -> None:
        """``new`` rephrases ``orig``: ``orig`` is defective and the chain grows. ``new`` may
        already head a chain of its own (a late ``orig``): every turn of it gets the prefix."""
        orig.rephrased_by = new.event_id
        orig.add_signal("rephrased")
        new.rephrase_of = orig.event_id
        turns = self._chain_from(st, new)  # new and what already rephrases it (a late orig)
        tip = turns[-1]
        flagged = orig.repeat_flagged or any(t.repeat_flagged for t in turns)
        for turn in turns:
            turn.chain = orig.chain + turn.chain
            turn.chain_norms = orig.chain_norms + turn.chain_norms
        self.stats.signals["rephrase"] += 1
        out.append(Output(REPHRASES, new.event_id, {
            "event_id": new.event_id, "rephrase_of": orig.event_id, "device_id": st.device_id,
            "utterance": new.utterance, "original_utterance": orig.utterance,
            "gap_ms": new.ts - orig.ts, "score": round(score, 4),
        }))
        repeated = not flagged and len(tip.chain) >= self.s.teach_repeat_count
        for turn in turns:
            turn.repeat_flagged = flagged or repeated
        if repeated:
            root_turn = st.find_pending(orig.chain[0])
            self._teachable(st.device_id, "repeated_request", list(tip.chain),
                            root_turn.utterance if root_turn else orig.utterance, tip.ts, out)

    @staticmethod
    def _chain_from(st: DeviceState, turn: TurnState | None) -> list[TurnState]:
        """``turn`` and the pending turns that rephrase it, in chain order."""
        chain = []
        while turn is not None:
            chain.append(turn)
            turn = st.find_pending(turn.rephrased_by) if turn.rephrased_by else None
        return chain

    def _unknown_concept(self, st: DeviceState, new: TurnState, out: list[Output]) -> None:
        horizon = new.ts - self.s.teach_window_ms
        st.unknown_turns = [u for u in st.unknown_turns if u[0] >= horizon]
        st.unknown_turns.append((new.ts, new.event_id))
        if len(st.unknown_turns) >= self.s.teach_unknown_count and (
                new.ts >= st.unknown_flagged_until):
            ids = [eid for _, eid in st.unknown_turns]
            self._teachable(st.device_id, "unknown_concept", ids, new.utterance, new.ts, out)
            st.unknown_flagged_until = new.ts + self.s.teach_window_ms
            st.unknown_turns = []

    def _teachable(self, device_id: str, reason: str, event_ids: list[str],
                   utterance: str | None, ts: int, out: list[Output], **extra: Any) -> None:
        self.stats.signals["teachable_moment"] += 1
        record = {"device_id": device_id, "reason": reason, "event_ids": event_ids,
                  "utterance": utterance, "ts": ts, **extra}
        out.append(Output(TEACHABLE_MOMENTS, f"{reason}:{event_ids[-1]}", record))

    # -- state for changelog-backed tables -------------------------------------------------------
    def export_device(self, device_id: str) -> dict[str, Any] | None:
        st = self.devices.get(device_id)
        return None if st is None else st.to_dict()

    def import_watermark(self, watermark: int) -> None:
        """Restore the stream watermark saved with the device states: without it a restarted
        stage finalises turns at other input offsets than the first run did."""
        self.watermark = max(self.watermark, watermark)

    def import_device(self, data: dict[str, Any]) -> None:
        st = DeviceState.from_dict(data)
        self.devices[st.device_id] = st
        for turn in st.pending:
            heapq.heappush(self._deadlines,
                           (turn.ts + self.s.rephrase_window_ms, st.device_id, turn.event_id))

    def take_dirty(self) -> tuple[set[str], set[str]]:
        """(changed device ids, removed device ids) since the last call."""
        return self.changes.take()
