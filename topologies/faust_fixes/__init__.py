"""Faust and broker workarounds, one module per workaround (shaped like Faust's ``fixups``).

Each module names the upstream issue it works around (or says that none is filed) and is
measured by ``tests/test_faust_fixes.py`` (an echo worker restarted mid-stream),
``tests/test_faust_fixes_units.py`` (one workaround at a time) or the broker tests:

- ``recovery_seek``: Faust resumes partitions before seeking them after table recovery
  (faust-streaming issue 596): seek first; seek uncommitted partitions to the earliest.
- ``tansu_settings``: app settings the embedded broker needs (short sessions).
- ``recovery_highwaters``: table recovery reads each changelog to the end a Fetch reports
  (the embedded broker's "latest offset" answer stops short with multi-record batches).
- ``fetch_max_wait``: Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer.
- ``startup_logging``: Faust's worker leaves the root logger at DEBUG after start-up.
- ``broker_offsets``: crash instead of committing input offsets to a broker that lost the
  group's committed offsets or membership (memory storage); checked in the commit path and
  at partition assignment.
- ``producer_backpressure``: Faust's producer-buffer waits counted as metrics, not logged.
- ``fetch_holes``: records fetched but never delivered to the streams (the positions moved on
  past them after a rebalance) are fetched again instead of committed over as a gap, also at
  the end of a partition, where no later fetch shows the hole (``rewind_stranded``).
- ``chunk_transport``: Faust hands agents one event per record (~80 us each); the ``chunks://``
  transport hands them one per fetched partition chunk, offsets committed exactly (the
  worker's transport, see docs/operations.md); ``queue_one_chunk`` keeps a backlog in the
  broker (``app.topic()`` drops ``maxsize``).
- ``producer_flush``: Faust's producer flush before an offset commit returns early under
  load (0.1 s per message), so offsets were committed ahead of the table writes: wait for all.
- ``changelog_batches``: Faust hands table writes to the producer one at a time from its
  buffer and holds the agents while it is full; the worker sends each chunk's writes together
  and awaits them before the next chunk.
- ``consumer_internals``: the only reads of Faust's private per-partition consumer offsets.

``topologies.app`` installs them; nothing else in the app touches Faust internals.
"""

from topologies.faust_fixes.broker_offsets import (
    BrokerLostOffsets,
    OffsetGuard,
    install_offset_guard,
)
from topologies.faust_fixes.changelog_batches import (
    CHANGELOG_BATCH_BYTES,
    ChangelogBatch,
    batch_changelog,
    send_in_turn,
)
from topologies.faust_fixes.chunk_transport import (
    CHUNK_SCHEME,
    ChunkMessage,
    chunk_topics,
    chunks,
    install_chunk_transport,
    queue_one_chunk,
)
from topologies.faust_fixes.consumer_internals import (
    committed_offsets,
    flow_state,
    read_offset,
    stream_queues,
)
from topologies.faust_fixes.fetch_holes import install_fetch_hole_rewind, rewind_stranded
from topologies.faust_fixes.fetch_max_wait import install_fetch_max_wait
from topologies.faust_fixes.producer_backpressure import install_backpressure_metrics
from topologies.faust_fixes.producer_flush import (
    install_full_producer_flush,
    uninstall_full_producer_flush,
)
from topologies.faust_fixes.recovery_highwaters import (
    fetch_high_watermarks,
    install_recovery_highwaters,
    uninstall_recovery_highwaters,
)
from topologies.faust_fixes.recovery_seek import (
    install_recovery_seek_fix,
    recovery_seek_fix_installed,
    uninstall_recovery_seek_fix,
)
from topologies.faust_fixes.startup_logging import stop_debug_logging_after_startup
from topologies.faust_fixes.tansu_settings import broker_settings_for_tansu

__all__ = [
    "CHANGELOG_BATCH_BYTES",
    "CHUNK_SCHEME",
    "BrokerLostOffsets",
    "ChangelogBatch",
    "ChunkMessage",
    "OffsetGuard",
    "batch_changelog",
    "broker_settings_for_tansu",
    "chunk_topics",
    "chunks",
    "committed_offsets",
    "fetch_high_watermarks",
    "flow_state",
    "install_backpressure_metrics",
    "install_chunk_transport",
    "install_fetch_hole_rewind",
    "install_fetch_max_wait",
    "install_full_producer_flush",
    "install_offset_guard",
    "install_recovery_highwaters",
    "install_recovery_seek_fix",
    "queue_one_chunk",
    "read_offset",
    "stream_queues",
    "recovery_seek_fix_installed",
    "stop_debug_logging_after_startup",
    "uninstall_full_producer_flush",
    "uninstall_recovery_highwaters",
    "uninstall_recovery_seek_fix",
    "rewind_stranded",
    "send_in_turn",
]
