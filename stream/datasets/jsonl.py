"""Writing a generated stream: events and their truth as two JSONL files."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import orjson


def write_pairs(pairs: Iterable[tuple[bytes, dict[str, Any] | None]], path_events: str,
                path_truth: str | None, observe: Callable[[dict[str, Any] | None], None]) -> None:
    """Each event line to ``path_events`` (``"-"``: stdout), its truth to ``path_truth`` (if
    given); ``observe`` sees every truth (for the generator's summary)."""
    ev = sys.stdout.buffer if path_events == "-" else open(path_events, "wb")  # noqa: SIM115
    tr = open(path_truth, "wb") if path_truth else None  # noqa: SIM115
    try:
        for line, truth in pairs:
            ev.write(line + b"\n")
            if tr:
                tr.write(orjson.dumps(truth) + b"\n")
            observe(truth)
    finally:
        if ev is not sys.stdout.buffer:
            ev.close()
        if tr:
            tr.close()
