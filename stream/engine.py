"""The in-process engine: parse -> stage 1 (per device) -> stage 2 (per estimate key).

The Kafka topologies run the same two stages in separate agents with a repartition topic in
between; this class chains them directly so a recorded stream can be replayed with no broker.

>>> eng = FeedbackEngine()
>>> out = eng.process(b'{"type":"turn","event_id":"a","device_id":"d","ts":1700000000000,'
...                   b'"utterance":"play jazz","tts_end_ts":1700000004000}')
>>> out = eng.process(b'{"type":"turn","event_id":"b","device_id":"d","ts":1700000002000,'
...                   b'"utterance":"play jazz music"}')
>>> sorted({o.stream for o in out})
['barge-ins', 'rephrases']
>>> [o.record["signals"] for o in eng.flush() if o.stream == "defects"]
[['barge_in', 'rephrased']]
>>> eng.process(b"not json")[0].record["reason"]
'invalid_json'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stream.devices import DUPLICATE, LATE, OK, UNKNOWN_TURN, DeviceStage
from stream.partition import partition_of
from stream.privacy import dead_letter_keeps_raw, pseudonymizer
from stream.rates import RateStage
from stream.records import CHAINS, KEY_TYPES, Output, dead_letter
from stream.rewrite_layers import RewriteLayers
from stream.schema import Feedback, Invalid, Parser, Turn
from stream.settings import Settings
from stream.stats import EngineStats


class DeviceEngine:
    """Parsing + stage 1. Emits ``rate-updates`` for stage 2 (and, with ``emit_chains``,
    ``rephrase-chains`` for rewrite mining) instead of applying them."""

    def __init__(self, settings: Settings | None = None, stats: EngineStats | None = None,
                 emit_chains: bool = False):
        self.settings = settings or Settings()
        self.stats = stats if stats is not None else EngineStats()
        self.parser = Parser(self.settings)
        self.pseudonymize = pseudonymizer(self.settings)
        self.keep_raw = dead_letter_keeps_raw(self.settings)
        self.devices = DeviceStage(self.settings, self.stats, emit_chains=emit_chains)

    def process(self, raw: bytes | str, source: dict[str, Any] | None = None) -> list[Output]:
        """All outputs caused by one raw message. Never raises on bad input."""
        event = self.parser.parse(raw)
        # The input partition (pair evidence is kept per partition): Kafka's, or the one a
        # producer keying by the raw device id would pick.
        raw_id = getattr(event, "device_id", None)
        self.devices.input_partition = (
            source["partition"] if source is not None and "partition" in source
            else partition_of(raw_id, self.settings.partitions) if isinstance(raw_id, str)
            else 0)
        if self.pseudonymize is not None:
            # The one place identifiers enter: state, records, keys and tables see pseudonyms.
            self.pseudonymize.event(event)
        self.devices.position = (
            (source["partition"], source["offset"])
            if source is not None and "partition" in source else None)
        if isinstance(event, Invalid):
            return [self._reject(event.reason, event.error, raw, event.event_type,
                                 event.device_id, source)]
        if isinstance(event, Turn):
            etype, result = "turn", self.devices.on_turn(event)
        elif isinstance(event, Feedback):
            etype, result = "feedback", self.devices.on_feedback(event)
        else:
            self.stats.events[("watermark", "ok")] += 1
            return self.devices.on_watermark(event.ts)
        if result.status == OK:
            self.stats.events[(etype, "ok")] += 1
            return result.outputs
        if result.status == DUPLICATE:
            self.stats.events[(etype, "duplicate")] += 1
            # A re-delivery still moves the stream watermark as the first delivery did: after
            # a crash, the restored state may hold this event while other devices' states
            # do not, and their turns must become final at the same input offset as before.
            return self.devices.on_watermark(event.ts - self.settings.allowed_lateness_ms,
                                             evidence=False)
        error = {
            LATE: f"event ts {event.ts} is older than its device's watermark minus the "
                  f"allowed lateness ({self.settings.allowed_lateness_ms} ms)",
            UNKNOWN_TURN: f"feedback refers to unknown turn "
                          f"{getattr(event, 'ref_event_id', '')!r}",
        }[result.status]
        return [self._reject(result.status, error, raw, etype, event.device_id, source)]

    def count_redelivered(self, raw: bytes | str) -> None:
        """Count a message as a duplicate without processing it: for a re-delivered message
        whose effects the caller knows the state already holds (its input offset is at or
        below the last one the restored state covers)."""
        event = self.parser.parse(raw)
        if isinstance(event, Invalid):
            etype = event.event_type
        else:
            etype = "turn" if isinstance(event, Turn) else (
                "feedback" if isinstance(event, Feedback) else "watermark")
        self.stats.events[(etype, "duplicate")] += 1

    def _reject(self, reason: str, error: str, raw: bytes | str, etype: str,
                device_id: str | None, source: dict[str, Any] | None) -> Output:
        self.stats.events[(etype, "dead_letter")] += 1
        self.stats.dead_letters[reason] += 1
        return dead_letter(reason, error, raw, etype, device_id, source,
                           self.settings.dead_letter_max_raw_bytes, self.keep_raw)

    def flush(self) -> list[Output]:
        return self.devices.flush()


class FeedbackEngine:
    """All stages in one process: what ``feedback-stream replay`` runs.

    Works in batches of ``settings.batch_events`` input events, as the Kafka worker works in
    consumer batches: signals and drift alerts leave with the event that caused them, while
    ``defect-rates`` estimates (one per key changed in the batch, its state after the batch)
    and the pending rewrite decisions leave with the batch's last event, and at ``flush``.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.stats = EngineStats()
        self.stage1 = DeviceEngine(self.settings, self.stats, emit_chains=True)
        self.stage2 = RateStage(self.settings, self.stats)
        self.rewrites = RewriteLayers.from_settings(self.settings, self.stats)
        self.stage1.devices.rate_sink = self._rate
        self._changed: dict[tuple[str, str], None] = {}
        """Estimate keys updated in the current batch, in order of their first update."""
        self._events = 0
        """Input events of the current batch."""

    def _rate(self, keys: tuple[str | None, ...], defective: bool, ts: int) -> list[Output]:
        """Stage 1's ``rate_sink``: one finalised turn applied to its keys at once, their
        estimates left for the end of the batch."""
        return self.stage2.update_keys(zip(KEY_TYPES, keys, strict=True), defective, ts,
                                       self._changed)

    def _chain(self, outputs: Iterable[Output]) -> list[Output]:
        result: list[Output] = []
        for out in outputs:
            if out.stream == CHAINS:
                result += self.rewrites.learn_one(out.record)
            else:
                result.append(out)
        return result

    def process(self, raw: bytes | str, source: dict[str, Any] | None = None) -> list[Output]:
        result = self._chain(self.stage1.process(raw, source))
        self._events += 1
        if self._events >= self.settings.batch_events:
            result += self.end_batch()
        return result

    def end_batch(self) -> list[Output]:
        """End the current batch now: one ``defect-rates`` estimate per key changed in it,
        then the pending rewrite decisions (``rewrite_decide_every`` > 1)."""
        self._events = 0
        changed, self._changed = self._changed, {}
        estimate = self.stage2.estimate
        result = [out for out in (estimate(key_type, key) for key_type, key in changed)
                  if out is not None]  # None: evicted again within the batch
        return result + self.rewrites.decide()

    def flush(self) -> list[Output]:
        """End of stream: finalise every turn, then end the batch."""
        return self._chain(self.stage1.flush()) + self.end_batch()
