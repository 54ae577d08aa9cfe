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
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from stream import records
from stream.changes import ChangeSet
from stream.dedupe import SeenFilter, fingerprint
from stream.detectors import (
    DETECTORS,
    Detector,
    TurnContext,
    failed_visibly,
    teachable_moment,
)
from stream.failure import (
    NLU,
    UNKNOWN,
    WEAK_GUESSES,
    FailureThresholds,
    attribute,
    attribute_in_hindsight,
    with_history,
)
from stream.pair_partitions import PartitionedEvidence
from stream.pairs import MEANING_SHARE
from stream.records import KEY_TYPES, NEGATIVE_FEEDBACK, Output
from stream.schema import Feedback, Turn
from stream.session import DeviceState, TurnState
from stream.settings import Settings
from stream.stats import EngineStats
from stream.text import is_stop_phrase

OK, DUPLICATE, LATE, UNKNOWN_TURN = "ok", "duplicate", "late", "unknown_turn"


class Result(NamedTuple):
    """How stage 1 took one event: ``ok`` with its outputs, or ``duplicate`` (dropped), or a
    dead-letter reason code (``late``, ``unknown_turn``), both without outputs."""

    status: str
    outputs: list[Output]


_NO_STATE = DeviceState("")
"""Returned with ``duplicate`` for an event of a device that has no state."""


def end_watermark(newest_ts: int, settings: Settings) -> int:
    """The watermark that ends a stream whose newest event has ``newest_ts``: the first one at
    which every turn is final (a replay's end of input; ``produce --end-of-stream``).

    >>> end_watermark(1_000_000, Settings(rephrase_window_ms=45_000))
    1045001
    """
    return newest_ts + settings.rephrase_window_ms + 1


class DeviceStage:
    def __init__(
        self,
        settings: Settings | None = None,
        stats: EngineStats | None = None,
        detectors: Iterable[type[Detector]] | None = None,
        emit_chains: bool = False,
    ) -> None:
        self.settings = settings or Settings()
        self.emit_chains = emit_chains
        """Emit ``rephrase-chains`` records (the rewrite miner's input) when chains end."""
        self.failure_thresholds = FailureThresholds.from_settings(self.settings)
        self.stats = stats if stats is not None else EngineStats()
        self.detectors = [cls(self.settings) for cls in (
            DETECTORS if detectors is None else detectors)]
        """Run on every new turn, in order (``stream.detectors``)."""
        # OrderedDict, not dict: taking the oldest entry of a plain dict that keeps losing
        # its front entries scans over their tombstones (quadratic at 100k+ devices).
        self.devices: OrderedDict[str, DeviceState] = OrderedDict()
        """Device states in least-recently-active-first order (for idle expiry)."""
        self.watermark = 0
        """Stream watermark: turns with ts + window < watermark are final."""
        self._deadlines: list[tuple[int, str, str]] = []
        self.newest_ts = 0
        """Largest ts of an admitted event (for the end-of-stream watermark)."""
        self.seen = SeenFilter(self.settings.dedupe_filter_capacity,
                               self.settings.dedupe_filter_generations,
                               self.settings.dedupe_filter_fp_rate)
        """Every admitted event, beyond the devices' recent ids (see ``_admit``)."""
        self.position: tuple[int, int] | None = None
        """(input partition, offset) of the message being processed, when it came from Kafka:
        stamped as ``src`` on ``rate-updates`` and ``rephrase-chains`` so that the stages
        behind can recognise the same update re-emitted after a crash (see
        ``topologies.processors.first_application``)."""
        self.changes = ChangeSet()
        """Devices whose state changed or went (for changelog writes; enable to track)."""
        self.rate_sink: Callable[[tuple[str | None, ...], bool, int], list[Output]] | None = None
        """Set by the in-process engine: applies one finalised turn to its estimate keys at
        once (the keys in ``KEY_TYPES`` order, None for a missing one; defective; ts) and
        returns what that causes, instead of a ``rate-updates`` record per key (a dict and an
        envelope that it would unpack again). One call per turn, not one per key."""
        self.input_partition = 0
        """Input partition of the event being processed (set by the caller)."""
        self.evidence = PartitionedEvidence(
            self.settings.pair_evidence_max_pairs,
            self.settings.rephrase_window_ms + self.settings.allowed_lateness_ms,
            self.settings.rephrase_model)
        """Collaborative rephrase evidence per input partition (``stream.pairs``)."""

    # -- events ----------------------------------------------------------------------------------
    def on_turn(self, turn: Turn) -> Result:
        """Outputs of one turn, unless it is a ``duplicate`` or ``late``."""
        st, status = self._admit(turn.device_id, turn.event_id, turn.ts)
        if status:
            return Result(status, [])
        out: list[Output] = []
        s = self.settings
        self._finalize_device(st, st.watermark - s.rephrase_window_ms, out)
        new = TurnState(
            turn.event_id, turn.ts, turn.utterance, turn.norm, turn.intent, turn.domain,
            turn.device_type, turn.asr_confidence, turn.nlu_confidence, turn.tts_end_ts,
            turn.barge_in_ts, chain=[turn.event_id], chain_norms=[turn.norm], slots=turn.slots,
        )
        new.stop_turn = is_stop_phrase(turn.norm)
        # A turn that arrives late (within the allowed lateness) takes its place in event
        # time: pending stays sorted by ts, and the turns around it are its neighbours.
        pending = st.pending
        at = len(pending)
        while at and pending[at - 1].ts > turn.ts:
            at -= 1
        pending.insert(at, new)
        ctx = TurnContext(st, new, at, s, self.stats, out,
                          self.evidence.partition(st.partition))
        for detector in self.detectors:
            detector.on_turn(ctx)
        heapq.heappush(self._deadlines,
                       (turn.ts + s.rephrase_window_ms, turn.device_id, turn.event_id))
        self._advance(turn.ts - s.allowed_lateness_ms, out)
        self._advance_evidence(st, turn.ts)
        return Result(OK, out)

    def on_feedback(self, fb: Feedback) -> Result:
        """Outputs of explicit feedback, unless a ``duplicate``, ``late`` or about an
        ``unknown_turn``."""
        s = self.settings
        st, status = self._admit(fb.device_id, fb.event_id, fb.ts)
        if status:
            return Result(status, [])
        # Every rule below depends on the two timestamps only, never on whether the turn is
        # still pending: when the stream watermark finalised it depends on other devices'
        # events (per input partition in Kafka, the whole stream in a replay), and a rule
        # that depended on it made replay and Kafka disagree on sparse streams.
        target = st.find_pending(fb.ref_event_id)
        ref = (target.ts, target.utterance) if target is not None else st.recent_turns.get(
            fb.ref_event_id)
        if ref is None or fb.ts - ref[0] > s.teach_window_ms:
            return Result(UNKNOWN_TURN, [])
        out: list[Output] = []
        utterance = ref[1]
        ids = [fb.ref_event_id, fb.event_id]
        if fb.kind == "satisfaction" and fb.value == "negative":
            if target is not None and fb.ts - target.ts <= s.rephrase_window_ms:
                # Within the rephrase window the turn cannot be final yet (for events that
                # arrive at most the allowed lateness behind the stream), so the label is
                # the same in replay and in Kafka; later feedback only raises the moment.
                target.add_signal(NEGATIVE_FEEDBACK)
            teachable_moment(self.stats, out, fb.device_id, NEGATIVE_FEEDBACK, ids, utterance,
                             fb.ts)
        elif fb.kind == "teach":
            teachable_moment(self.stats, out, fb.device_id, "user_teaching", ids, utterance,
                             fb.ts, teach=fb.value)
        self._finalize_device(st, st.watermark - s.rephrase_window_ms, out)
        self._advance(fb.ts - s.allowed_lateness_ms, out)
        self._advance_evidence(st, fb.ts)
        return Result(OK, out)

    def on_watermark(self, ts: int, evidence: bool = True) -> list[Output]:
        """A stream watermark. ``evidence=False`` for the watermark a re-delivered event
        implies: in Kafka it reaches one partition, so it must not move pair evidence."""
        out: list[Output] = []
        self._advance(ts, out)
        if evidence:
            self.evidence.advance_all(ts, self.devices, self.changes.touch)
        return out

    def _advance_evidence(self, st: DeviceState, ts: int) -> None:
        """After finalising (``stream.pairs`` says why): count the observations now due."""
        self.evidence.advance(self.evidence.partition(st.partition), ts, self.devices,
                              self.changes.touch)

    def flush(self) -> list[Output]:
        """End of stream: every pending turn becomes final, exactly as the watermark
        ``end_watermark(newest event ts)`` makes it final (the watermark that
        ``feedback-stream produce --end-of-stream`` sends every partition): same turns, same
        order, so a replay and a worker fed that watermark agree."""
        out = self.on_watermark(end_watermark(self.newest_ts, self.settings))
        for st in list(self.devices.values()):  # none left unless a watermark event ran ahead
            self._finalize_device(st, None, out)
        return out

    # -- internals -------------------------------------------------------------------------------
    def _admit(self, device_id: str, event_id: str, ts: int) -> tuple[DeviceState, str]:
        """The device's state and "" for an event to process, else ``duplicate`` or ``late``.

        A re-delivery within the allowed lateness is recognised by the device's recent ids
        (exact). An older event is looked up in the ``SeenFilter``: seen before means a
        re-delivery (a duplicate, not ``late``); so is an old event of a device whose state
        expired (older than the stream watermark: a new device's first event is not). Only
        those old events are looked up, so a false positive can only turn a genuinely late
        event into a duplicate; it never drops an event that would have been processed."""
        s = self.settings
        st = self.devices.get(device_id)
        fp = fingerprint(device_id, event_id)
        if st is None:
            if ts < self.watermark and fp in self.seen:
                return _NO_STATE, DUPLICATE  # no state: an expired device stays expired
            st = self.devices[device_id] = DeviceState(device_id, partition=self.input_partition)
            self.evidence.readmit(st)
        else:
            self.devices.move_to_end(device_id)  # most recently active last
            if event_id in st.recent_ids:
                return st, DUPLICATE
            if st.watermark and ts < st.watermark - s.allowed_lateness_ms:
                return st, DUPLICATE if fp in self.seen else LATE
        self.seen.add(fp)
        st.remember(event_id, ts, max(st.watermark, ts) - s.allowed_lateness_ms,
                    s.dedupe_capacity)
        if ts > st.watermark:
            st.watermark = ts
        if ts > self.newest_ts:
            self.newest_ts = ts
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
        horizon = watermark - self.settings.device_idle_ms
        while self.devices:
            device_id = next(iter(self.devices))
            st = self.devices[device_id]
            if st.last_ts >= horizon or st.pending or st.waiting:
                break
            del self.devices[device_id]
            self.evidence.expire(st)
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
        recent = st.recent_turns
        recent[turn.event_id] = (turn.ts, turn.utterance)
        if turn.ts < st.recent_turns_floor:
            st.recent_turns_floor = turn.ts
        # Kept while feedback within the teach window of it can still be admitted.
        s = self.settings
        horizon = st.watermark - s.allowed_lateness_ms - s.teach_window_ms
        if st.recent_turns_floor < horizon:
            for eid in [e for e, (ts, _) in recent.items() if ts < horizon]:
                del recent[eid]
            st.recent_turns_floor = min((ts for ts, _ in recent.values()), default=0)
        defective = bool(turn.signals)
        if defective:
            rephrase = st.find_pending(turn.rephrased_by) if turn.rephrased_by else None
            turn.failure_guess = self._guess(st, turn, rephrase)
            if turn.rephrased_by is not None:
                st.waiting.append(turn)  # decided when its chain ends (hindsight)
            else:
                self._defect(st, turn, turn.failure_guess, out)
        points = None
        if turn.rephrased_by is None and len(turn.chain) > 1 and st.waiting:
            points = self._resolve_chain(st, turn, defective, out)
        if not turn.stop_turn:
            self.evidence.observe(st, turn, not failed_visibly(turn, self.settings), points)
        src = {} if self.position is None else {"src": self.position}
        if self.emit_chains and turn.rephrased_by is None:
            # The tip of a chain (a lone turn is a chain of one): the chain's outcome is known.
            out.append(records.chain(st.device_id, turn, defective, src))
        keys = (turn.norm, turn.intent, turn.domain, turn.device_type)  # as KEY_TYPES
        sink = self.rate_sink
        if sink is not None:
            out += sink(keys, defective, turn.ts)
            return
        for key_type, key in zip(KEY_TYPES, keys, strict=True):
            if key:
                out.append(records.rate_update(key_type, key, turn, defective, src))

    def _resolve_chain(self, st: DeviceState, tip: TurnState, failed: bool,
                       out: list[Output]) -> list[list[str]]:
        """The chain ending at ``tip`` is over: its earlier turns are compared with ``tip``
        if it went well; otherwise each keeps the guess made with its own rephrase. Returns
        [utterance, failure point] of the turns decided in hindsight (the utterances'
        failure history, ``with_history``)."""
        members = set(tip.chain)
        points = []
        for turn in [t for t in st.waiting if t.event_id in members]:
            if failed:
                point = turn.failure_guess or UNKNOWN
            else:
                point = attribute_in_hindsight(turn, tip, self.failure_thresholds)
                points.append([turn.norm, point])
            self._defect(st, turn, point, out)
        st.waiting = [t for t in st.waiting if t.event_id not in members]
        return points

    def _guess(self, st: DeviceState, turn: TurnState, rephrase: TurnState | None) -> str:
        """The failure point without hindsight (``attribute``), corrected by what people
        mean by the utterance (pair evidence): a confident intent that is not the one the
        utterance usually gets when it works is an NLU failure, not a bad result; then by
        where its failures were found in hindsight (``with_history``)."""
        point = attribute(turn, rephrase, self.failure_thresholds)
        evidence = self.evidence.partition(st.partition)
        if point in WEAK_GUESSES and turn.intent:
            meaning = evidence.meaning(turn.norm)
            if meaning is not None and meaning[1] >= MEANING_SHARE and meaning[0] != turn.intent:
                point = NLU
        return with_history(point, evidence.failure_profile(turn.norm), self.failure_thresholds)

    def _defect(self, st: DeviceState, turn: TurnState, failure_point: str,
                out: list[Output]) -> None:
        self.stats.signals["defect"] += 1
        self.stats.failure_points[failure_point] += 1
        out.append(records.defect(st.device_id, turn, failure_point))

    # -- state for changelog-backed tables -------------------------------------------------------
    # Same vocabulary as RateStage and PersonalRewriteMiner: snapshot(key) / restore(key,
    # data) / take_changes(); the data is the state object's to_dict().
    def snapshot(self, device_id: str) -> dict[str, Any] | None:
        st = self.devices.get(device_id)
        return None if st is None else st.to_dict()

    def restore_watermark(self, watermark: int) -> None:
        """Restore the stream watermark saved with the device states: without it a restarted
        stage finalises turns at other input offsets than the first run did."""
        self.watermark = max(self.watermark, watermark)

    def restore(self, device_id: str, data: dict[str, Any]) -> None:
        st = self.devices[device_id] = DeviceState.from_dict(data)
        window = self.settings.rephrase_window_ms
        for turn in st.pending:
            heapq.heappush(self._deadlines, (turn.ts + window, device_id, turn.event_id))
        self.evidence.import_device(st)

    def take_changes(self) -> tuple[set[str], set[str]]:
        """(changed device ids, removed device ids) since the last call."""
        return self.changes.take()
