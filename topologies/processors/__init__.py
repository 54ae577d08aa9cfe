"""Batch processors between the Faust agents and the pure core (no Faust import:
unit-testable), one module per stage, each a ``topologies.types.BatchProcessor``.

Hot state lives in the core's plain objects; the changelog-backed table (any mutable mapping
of str -> bytes) is written once per changed key per batch and read back after a restart or
rebalance. Stage 1 runs the core once per *input partition* so that watermarks, finalisation
and state are exactly those of the in-process replay of that partition.

- ``devices``: stage 1 (``DeviceProcessor``), device states and per-partition watermarks;
- ``personal_rewrites``: the personal rewrite layer beside stage 1 (``PersonalRewrites``);
- ``rates``: stage 2 (``RateProcessor``), defect-rate estimates;
- ``global_rewrites``: the global rewrite layer (``GlobalRewriteProcessor``), one partition;
- ``merging``: merged internal records; ``state``: tables, row codecs, replay safety.
"""

from topologies.processors.devices import DeviceProcessor, watermark_key
from topologies.processors.global_rewrites import GlobalRewriteProcessor
from topologies.processors.merging import coalesce, expand_chains, expand_rate_updates
from topologies.processors.personal_rewrites import PersonalRewrites
from topologies.processors.rates import RateProcessor
from topologies.processors.state import (
    RawKeyTable,
    co_partitioned,
    decode,
    first_application,
    partition_of,
)
from topologies.types import BatchProcessor, Message

__all__ = [
    "BatchProcessor",
    "DeviceProcessor",
    "GlobalRewriteProcessor",
    "Message",
    "PersonalRewrites",
    "RateProcessor",
    "RawKeyTable",
    "co_partitioned",
    "coalesce",
    "decode",
    "expand_chains",
    "expand_rate_updates",
    "first_application",
    "partition_of",
    "watermark_key",
]
