"""Faust's consumer keeps per-partition positions only in private attributes.

Upstream: Faust 0.15.3 has no public accessor for a partition's committed or read offset (no
faust-streaming issue filed from here). Every read of those attributes goes through this module,
so a Faust upgrade that renames them breaks here, in one place, under
``tests/test_faust_fixes.py`` and the broker tests.
"""

from __future__ import annotations

from typing import Any


def committed_offsets(consumer: Any) -> dict[Any, int | None]:
    """TopicPartition -> offset this consumer last committed (forgotten on revoke)."""
    return consumer._committed_offset


def read_offset(consumer: Any, tp: Any) -> int | None:
    """Offset of the last record of ``tp`` handed to the streams (None: none yet)."""
    return consumer._read_offset.get(tp)
