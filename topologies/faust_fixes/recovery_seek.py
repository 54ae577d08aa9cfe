"""Faust's race after table recovery: faust-streaming issue 596.

"A race condition in recovery causes unrecoverable gaps in acked offsets"
(https://github.com/faust-streaming/faust/issues/596; still open for faust-streaming 0.15.3).
``Recovery.on_recovery_completed`` resumes the input partitions and only then seeks them to the
committed offsets. The fetcher is already running at that point (it was restoring the
changelogs), so records fetched from the stale position in that window are processed: some
skipped, some processed twice. The fix seeks first, then resumes, and seeks partitions without a
committed offset to the earliest (aiokafka leaves those where the fetcher left them, which was
seen past records never processed). Measured by ``tests/test_faust_fixes.py`` (worker restart
mid-stream: exact counts).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from topologies.faust_fixes import consumer_internals, fetch_holes

log = logging.getLogger(__name__)

_MARKER = "_feedback_stream_seek_fix_original"


async def _on_recovery_completed_seek_first(self: Any, generation_id: int = 0) -> None:
    """faust 0.15.3's ``Recovery.on_recovery_completed`` with the seek moved before the resume.

    Everything else is unchanged, line for line, so upgrades can be diffed against upstream.
    """
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callback_coros = [
        asyncio.ensure_future(
            table.on_recovery_completed(
                self.actives_for_table[table], self.standbys_for_table[table]
            )
        )
        for table in self.tables.values()
    ]
    if callback_coros:
        await asyncio.wait(callback_coros)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(
            f"Recovery rebalancing again app id "
            f"{self.app.consumer_generation_id} param {generation_id}"
        )
        return
    # The fix (issue 596): seek while the input partitions are still paused. Upstream resumes
    # them first; the running fetcher then delivers records from the old position.
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(
            consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout
        )
        await _seek_uncommitted_to_earliest(self, consumer, assignment)
    consumer.resume_partitions(
        {tp for tp in assignment if not self._is_changelog_tp(tp)}
    )
    self.completed.set()
    self.log.dev("Resume stream partitions")
    self.app.flow_control.resume()
    consumer.resume_flow()
    await self.app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


async def _seek_uncommitted_to_earliest(self: Any, consumer: Any, assignment: set) -> None:
    """Second fix: aiokafka's ``seek_to_committed`` seeks only partitions with a committed
    offset above 0 and leaves the others wherever the fetcher left them. Measured on tansu
    (2 SIGKILL runs in 5): a worker killed before its first offset commit, the next one's
    first records of a partition came from offset 749 while its restored state covered up to
    358; the 390 records between were never processed. Seek them to the earliest offset, as
    ``consumer_auto_offset_reset="earliest"`` means (the app skips what its restored state
    already covers)."""
    uncommitted = {tp for tp in assignment
                   if not self._is_changelog_tp(tp)
                   and not consumer_internals.committed_offsets(consumer).get(tp)}
    if not uncommitted:
        return
    earliest = await consumer.earliest_offsets(*uncommitted)
    offsets = {tp: offset for tp, offset in earliest.items() if offset is not None}
    self.log.info("Seek partitions without a committed offset to the earliest: %r", offsets)
    await self._wait(consumer.seek_wait(offsets),
                     timeout=self.app.conf.broker_request_timeout)
    # Faust keeps no read offset for a partition sought to 0: tell the fetch-hole check
    # where these must start.
    fetch_holes.expect_from(consumer, offsets)


def _upstream_has_the_race(method: Any) -> bool:
    """True if ``method`` still resumes partitions before seeking (the shape patched here)."""
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):
        return False
    resume, seek = source.find("resume_partitions("), source.find("perform_seek()")
    return 0 <= resume < seek


def install_recovery_seek_fix() -> bool:
    """Patch ``faust.tables.recovery.Recovery.on_recovery_completed`` (idempotent).

    Returns True if the fix is active. If the installed Faust no longer has the racy order
    (upgraded, fixed upstream), nothing is patched, a warning is logged and False returned.
    Must run in the worker process before the app starts (e.g. when the app module is
    imported); it affects every Faust app in the process. Faust has no setting for the
    Recovery class (only for the whole TableManager), hence a patch of one method.
    """
    from faust.tables.recovery import Recovery

    if getattr(Recovery, _MARKER, None) is not None:
        return True
    original = Recovery.on_recovery_completed
    if not _upstream_has_the_race(original):
        log.warning("faust Recovery.on_recovery_completed no longer resumes before seeking; "
                    "the issue-596 patch is not installed (check the installed Faust)")
        return False
    setattr(Recovery, _MARKER, original)
    Recovery.on_recovery_completed = _on_recovery_completed_seek_first  # type: ignore[method-assign]
    return True


def uninstall_recovery_seek_fix() -> None:
    """Restore Faust's original method (tests measure both)."""
    from faust.tables.recovery import Recovery

    original = getattr(Recovery, _MARKER, None)
    if original is not None:
        Recovery.on_recovery_completed = original  # type: ignore[method-assign]
        delattr(Recovery, _MARKER)


def recovery_seek_fix_installed() -> bool:
    from faust.tables.recovery import Recovery

    return getattr(Recovery, _MARKER, None) is not None
