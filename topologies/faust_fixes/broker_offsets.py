"""A broker that lost its state must not go unnoticed: never commit input offsets to it.

The embedded broker keeps everything in memory: after it restarts, the topics come back empty
while the worker still holds its old read positions. Consuming on from those would skip every
new record below them without a word. The worker therefore stops (CRITICAL, non-zero exit) so
a supervisor starts a fresh one, which reads the new topics from the start.

The check sits in the commit path, right before each commit of input offsets: the group's
committed offsets of the partitions about to be committed are read back (one OffsetFetch over
the consumer's own connection) and compared with what this worker committed last. A check at
partition assignment (the earlier design) raced with Faust's commit timer: measured under CPU
load, the timer's first commit after the rejoin wrote the old positions to the restarted broker
before the check read the group's offsets (3 of 4 runs had committed partitions there already),
so the check found nothing missing and the worker went on skipping input (1,125 of 2,029
records). Here no commit reaches the broker before the check has passed, and nobody else
commits this group's offsets for partitions this worker owns, so the comparison is exact.

Upstream: tansu memory storage (by design, not a bug); Faust has no hook before a commit, so
the consumer's ``_commit_offsets`` (its only commit path without transactions) is wrapped (no
faust-streaming issue filed from here).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import TopicPartition

log = logging.getLogger(__name__)

Fetch = Callable[[list[tuple[str, int]]], Awaitable[dict[tuple[str, int], int | None]]]
"""Reads the group's committed offset per (topic, partition); None = none committed."""


class BrokerLostOffsets(RuntimeError):
    """The broker no longer has offsets this worker committed (restarted with memory storage,
    or offsets expired)."""


class OffsetGuard:
    """Remembers the input offsets this worker committed and vetoes a commit when the broker no
    longer has them (see the module docstring)."""

    def __init__(self, input_topic: str, fetch: Fetch) -> None:
        self.input_topic = input_topic
        self.fetch = fetch
        self.committed: dict[tuple[str, int], int] = {}

    def lost(self, on_broker: Mapping[tuple[str, int], int | None]) -> list[tuple[str, int]]:
        """Partitions this worker committed that the broker has no (or an older) offset for.
        Another worker that took a partition over commits at or above our offset."""
        return sorted(tp for tp, ours in self.committed.items()
                      if tp in on_broker and (on_broker[tp] is None or on_broker[tp] < ours))

    async def guarded_commit(self, offsets: Mapping[Any, int],
                             commit: Callable[[], Awaitable[bool]]) -> bool:
        """Check, then run ``commit`` (which commits ``offsets``); False when not committed.
        Raises :class:`BrokerLostOffsets` when the broker lost offsets this worker committed."""
        ours = [(tp.topic, tp.partition) for tp in offsets if tp.topic == self.input_topic]
        known = [tp for tp in ours if tp in self.committed]
        if known:
            try:
                on_broker = await self.fetch(known)
            except Exception as exc:  # broker unreachable: retried at the next commit
                log.warning("not committing: cannot read the group's offsets (%r)", exc)
                return False
            missing = self.lost(on_broker)
            if missing:
                raise BrokerLostOffsets(
                    f"the broker lost this group's committed offsets for {missing} "
                    f"(restarted with memory storage?): stopping instead of silently "
                    f"skipping input")
        done = await commit()
        if done:
            self.committed.update({(tp.topic, tp.partition): off for tp, off in offsets.items()
                                   if tp.topic == self.input_topic})
        return done


def install_offset_guard(app: Any, input_topic: str) -> OffsetGuard:
    """Route the Faust consumer's commits through an :class:`OffsetGuard`; a lost-offsets
    finding logs CRITICAL and crashes the app (non-zero exit)."""
    consumer = app.consumer
    thread = consumer._thread  # Faust's aiokafka consumer thread (owns the connection)

    async def fetch(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        aio = thread._ensure_consumer()

        async def in_thread() -> dict[tuple[str, int], int | None]:
            return {tp: await aio.committed(TopicPartition(*tp)) for tp in tps}

        return await thread.call_thread(in_thread)

    guard = OffsetGuard(input_topic, fetch)
    original = consumer._commit_offsets

    async def commit_offsets(offsets: Mapping[Any, int],
                             start_new_transaction: bool = True) -> bool:
        try:
            return await guard.guarded_commit(
                offsets, lambda: original(offsets, start_new_transaction))
        except BrokerLostOffsets as exc:
            log.critical("%s", exc)
            await app.crash(exc)
            return False

    consumer._commit_offsets = commit_offsets  # Faust's only commit path (no transactions)
    return guard
