"""feedback-stream core: transport-free, deterministic in event time.

No Kafka, no asyncio, no globals here: ``topologies/`` wires these classes to Kafka.

The names below load on first use: importing ``stream.settings`` (every command line does)
must not pay for river and scipy, which only the engine needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream.engine import DeviceEngine, FeedbackEngine
    from stream.records import Output
    from stream.settings import Settings

__all__ = ["DeviceEngine", "FeedbackEngine", "Output", "Settings"]

_HOMES = {"DeviceEngine": "stream.engine", "FeedbackEngine": "stream.engine",
          "Output": "stream.records", "Settings": "stream.settings"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'stream' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
