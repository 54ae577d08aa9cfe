"""The core's settings: a dataclass with ``FEEDBACK_STREAM_*`` environment overrides.

Every field can be overridden by an environment variable named ``FEEDBACK_STREAM_`` plus the
field name in upper case, e.g. ``FEEDBACK_STREAM_REPHRASE_WINDOW_MS=30000``.

>>> s = Settings.from_env({"FEEDBACK_STREAM_REPHRASE_WINDOW_MS": "30000"})
>>> s.rephrase_window_ms
30000

These are the core's settings; the Kafka topology adds its own in ``topologies.settings``
(``KafkaSettings``, a subclass: one environment, one ``--help``, one README table).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Self

ENV_PREFIX = "FEEDBACK_STREAM_"
DEAD_LETTER_RAW_MODES = ("prefix", "none")


class SettingsError(ValueError):
    """A setting's value cannot be used; the message names the environment variable."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Settings of the core (detection, estimates, rewrite mining, drift, input limits)."""

    # --- detection (event time, milliseconds) ---
    rephrase_window_ms: int = 45_000
    """A later turn of the same device within this window may be a rephrase of an earlier one."""
    rephrase_threshold: float = 0.5
    """Rephrase scorer probability at or above which a candidate counts as a rephrase."""
    stop_followup_ms: int = 10_000
    """A "stop"/"cancel"/"no" turn within this time of a turn marks that turn defective."""
    allowed_lateness_ms: int = 60_000
    """Events older than the device watermark minus this are dead-lettered as late."""
    device_idle_ms: int = 30 * 60_000
    """Session state of a device with no events for this long (event time) is dropped."""
    dedupe_capacity: int = 256
    """Most event ids remembered exactly per device (those within the allowed lateness)."""
    dedupe_filter_capacity: int = 100_000
    """Events per generation of the filter that recognises older re-deliveries."""
    dedupe_filter_generations: int = 4
    """Generations of that filter: it remembers the last (generations - 1) * capacity to
    generations * capacity events (per input partition in Kafka)."""
    dedupe_filter_fp_rate: float = 1e-4
    """Bound on the probability that an event the filter never saw is taken as seen."""
    # --- teachable moments ---
    teach_repeat_count: int = 3
    """A device repeating/rephrasing one request this many times is a teachable moment."""
    teach_unknown_count: int = 2
    """Unknown-intent / low-NLU-confidence turns of one device within the window to flag."""
    teach_window_ms: int = 120_000
    low_nlu_confidence: float = 0.3
    low_asr_confidence: float = 0.5
    pair_evidence_max_pairs: int = 20_000
    """Rows per table (pairs, intent pairs, meanings, failures) of each input partition's
    collaborative rephrase evidence; the least-counted quarter is dropped when full."""
    rephrase_model: bool = True
    """Let each partition's online hindsight classifier (``stream.pair_model``) decide links on
    evidence once warm, instead of the evidence rules (off: the rules always decide)."""
    # --- estimates ---
    max_tracked_keys: int = 200_000
    """Cap on defect-rate estimators per key type (least recently updated are evicted)."""
    top_k: int = 20
    # --- rewrite mining (absorbing Markov chain) ---
    rewrite_min_support: int = 5
    """Chains in which the original occurs with the rewrite later, needed to publish."""
    rewrite_pool_min_support: int = 2
    """Global layer: with no rewrite in ``rewrite_min_support`` chains, rewrites that each
    recur in this many chains and work at first try are pooled; together they need
    ``rewrite_min_support`` chains (``rewrite_min_support`` or more: no pooling)."""
    rewrite_min_p_success: float = 0.6
    rewrite_min_gain: float = 0.2
    """P(success | rewrite) - P(success | original) needed to publish."""
    rewrite_max_states: int = 200_000
    rewrite_max_neighbourhood: int = 64
    rewrite_personal_max_devices: int = 10_000
    rewrite_personal_max_states: int = 1_000
    rewrite_decide_every: int = 5_000
    """Chains learned between two re-decisions of the affected utterances (and at the end of
    every batch); 1 = after every chain."""
    # --- batches ---
    batch_events: int = 5_000
    """In-process engine (replay): input events per batch. Estimates (one per key changed in
    the batch) and pending rewrite decisions are published at the end of each batch and of
    the stream, as the Kafka worker publishes them per consumer batch."""
    # --- drift ---
    drift_min_plays: int = 30
    """Plays of a key before its defect rate is watched for drift (ADWIN)."""
    drift_max_keys: int = 10_000
    drift_delta: float = 0.002
    # --- input limits ---
    max_message_bytes: int = 1_048_576
    max_field_chars: int = 4_096
    max_json_depth: int = 16
    dead_letter_max_raw_bytes: int = 65_536
    """Raw input kept in a dead-letter record; longer inputs are cut (with size + SHA-256)."""
    dead_letter_raw: str = ""
    """``prefix`` (up to ``dead_letter_max_raw_bytes``) or ``none`` (size + SHA-256 only);
    empty: ``none`` when ``device_id_key`` is set, else ``prefix``."""
    # --- privacy ---
    device_id_key: str = dataclasses.field(default="", repr=False)
    """Non-empty: device and event ids are replaced by keyed hashes (``stream.privacy``)."""
    min_ts: int = 946_684_800_000  # 2000-01-01
    max_ts: int = 4_102_444_800_000  # 2100-01-01
    # --- partitioning (shared with the Kafka topology) ---
    partitions: int = 4
    """Input partitions: the topics' partition count, and the partitions the in-process replay
    keeps per-partition state for (pair evidence), as a producer keying by device id would."""

    def __post_init__(self) -> None:
        # Checked when settings are built, so a command fails before it reads or connects.
        if self.batch_events < 1:
            raise SettingsError(f"{ENV_PREFIX}BATCH_EVENTS={self.batch_events}: expected >= 1")
        if self.dead_letter_raw not in ("", *DEAD_LETTER_RAW_MODES):
            raise SettingsError(f"{ENV_PREFIX}DEAD_LETTER_RAW={self.dead_letter_raw!r}: "
                                f"expected one of {', '.join(DEAD_LETTER_RAW_MODES)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Defaults, then ``FEEDBACK_STREAM_*`` variables, then explicit keyword overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is None:
                continue
            kind = type(field.default)
            try:
                values[field.name] = kind(raw) if kind is not bool else raw.lower() in (
                    "1", "true", "yes")
            except ValueError as exc:
                raise SettingsError(
                    f"{ENV_PREFIX}{field.name.upper()}={raw!r}: expected {kind.__name__}"
                ) from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any]]:
        """(environment variable, type, default) for every setting: used by ``--help`` and docs."""
        return [
            (ENV_PREFIX + f.name.upper(), type(f.default).__name__, f.default)
            for f in dataclasses.fields(cls)
        ]
