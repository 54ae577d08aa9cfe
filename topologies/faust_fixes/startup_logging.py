"""Faust's worker leaves the root logger at DEBUG after its start-up spinner.

Upstream: no faust-streaming issue filed from here (0.15.3, ``Worker._setup_spinner_handler``).
"""

from __future__ import annotations

import logging


async def stop_debug_logging_after_startup(root: logging.Logger | None = None) -> None:
    """Faust's worker puts the root logger at DEBUG for its start-up spinner (with ``-l warn``
    or above: ``Worker._setup_spinner_handler``) and leaves it there: every aiokafka send then
    builds a debug record that no handler prints (6% of the worker's CPU, bench/README.md).
    Run it as an app task (the worker has set up logging by then): the logger goes back to
    the lowest level of the handlers that print."""
    root = root or logging.getLogger()
    levels = [h.level for h in root.handlers if type(h).__name__ != "SpinnerHandler"]
    if levels and root.level < min(levels):
        root.setLevel(min(levels))
