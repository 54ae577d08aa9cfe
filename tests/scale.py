"""How big the core suite's sweeps are: quick by default, full scale in CI.

``FEEDBACK_STREAM_TEST_SCALE=full`` (set by scripts/test.sh, the README's test command) runs the
scale and property sweeps at the sizes their docstrings promise (1,000,000 turns, hundreds of
Hypothesis examples per property); unset or ``quick``, the same tests run the same checks on
smaller inputs so ``pytest -m "not kafka"`` stays a quick edit-test loop.
"""

from __future__ import annotations

import os

_SCALES = ("quick", "full")
SCALE = os.environ.get("FEEDBACK_STREAM_TEST_SCALE", "quick").strip().lower() or "quick"
if SCALE not in _SCALES:
    raise RuntimeError(f"FEEDBACK_STREAM_TEST_SCALE={SCALE!r}: expected one of {_SCALES}")
FULL = SCALE == "full"


def scaled(full: int, quick: int) -> int:
    """``full`` in CI, ``quick`` on a developer's machine."""
    return full if FULL else quick
