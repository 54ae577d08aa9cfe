"""A broker that lost its state must not go unnoticed: never commit input offsets to it.

The embedded broker keeps everything in memory: after it restarts, the topics come back empty
while the worker still holds its old read positions. Consuming on from those would skip every
new record below them without a word. The worker therefore stops (CRITICAL, non-zero exit) so
a supervisor starts a fresh one, which reads the new topics from the start.

Two checks, both in the commit path right before each OffsetCommit (after Faust's producer
flush, which can wait for seconds under load):

- **membership**: the consumer's (generation, member id). A broker that keeps its group state
  never hands out a generation at or below one this worker already had under another member id
  (a member that was dropped and rejoins gets a higher generation); the restarted embedded
  broker starts the group again at generation 0. This catches a restart before this worker
  ever committed, which the offsets cannot show: measured with the full producer flush, the
  worker's first commit waited in the flush across the broker restart and then wrote the old
  positions to the new broker, with nothing to compare them with (2 of 3 to 4 of 4 runs of the
  broker-restart test). Membership is also checked at every partition assignment.
- **offsets**: the group's committed offsets of the partitions about to be committed are read
  back (one OffsetFetch over the consumer's own connection) and compared with what this worker
  committed last. A check at partition assignment alone (the earlier design) raced with Faust's
  commit timer: measured under CPU load, the timer's first commit after the rejoin wrote the
  old positions to the restarted broker before the check read the group's offsets (3 of 4 runs
  had committed partitions there already), so the check found nothing missing and the worker
  went on skipping input (1,125 of 2,029 records). Here no commit reaches the broker before the
  check has passed, and nobody else commits this group's offsets for partitions this worker
  owns, so the comparison is exact.

A commit still in flight when the broker restarts (sent with the old member id) is refused by
the broker (unknown member); the guard runs again before the retry.

Upstream: tansu memory storage (by design, not a bug); Faust has no hook before a commit, so
the consumer's ``_commit`` (the OffsetCommit step of ``_commit_offsets``, its only commit path
without transactions) is wrapped; the membership is read from aiokafka's group coordinator (no
faust-streaming issue filed from here).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import TopicPartition

log = logging.getLogger(__name__)
_GUARDED = "_feedback_stream_offset_guard"

Fetch = Callable[[list[tuple[str, int]]], Awaitable[dict[tuple[str, int], int | None]]]
"""Reads the group's committed offset per (topic, partition); None = none committed."""

Membership = Callable[[], tuple[int, str]]
"""This consumer's current (generation, member id); generation < 0 or "" between joins."""


class BrokerLostOffsets(RuntimeError):
    """The broker no longer has offsets this worker committed (restarted with memory storage,
    or offsets expired)."""


class OffsetGuard:
    """Remembers the input offsets this worker committed and vetoes a commit when the broker no
    longer has them (see the module docstring)."""

    def __init__(self, input_topic: str, fetch: Fetch,
                 membership: Membership | None = None) -> None:
        self.input_topic = input_topic
        self.fetch = fetch
        self.membership = membership
        self.committed: dict[tuple[str, int], int] = {}
        self.member: tuple[int, str] | None = None
        """The latest (generation, member id) seen."""

    def check_membership(self) -> None:
        """Raises :class:`BrokerLostOffsets` when this consumer now holds a generation at or
        below one it held before under another member id: the broker lost the group."""
        if self.membership is None:
            return
        generation, member_id = self.membership()
        if generation < 0 or not member_id:
            return  # between leaving and joining: nothing to compare yet
        last = self.member
        if last is not None and member_id != last[1] and generation <= last[0]:
            raise BrokerLostOffsets(
                f"the broker lost this group's committed offsets and members (rejoined at "
                f"generation {generation} after generation {last[0]}; restarted with memory "
                f"storage?): stopping instead of silently skipping input")
        self.member = (generation, member_id)

    def lost(self, on_broker: Mapping[tuple[str, int], int | None]) -> list[tuple[str, int]]:
        """Partitions this worker committed that the broker has no (or an older) offset for.
        Another worker that took a partition over commits at or above our offset."""
        return sorted(tp for tp, ours in self.committed.items()
                      if tp in on_broker and (on_broker[tp] is None or on_broker[tp] < ours))

    async def guarded_commit(self, offsets: Mapping[Any, int],
                             commit: Callable[[], Awaitable[bool]]) -> bool:
        """Check, then run ``commit`` (which commits ``offsets``); False when not committed.
        Raises :class:`BrokerLostOffsets` when the broker lost offsets this worker committed
        or the group's membership (``check_membership``)."""
        self.check_membership()
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
    """Check membership at every partition assignment and route the Faust consumer's offset
    commits (after its producer flush) through an :class:`OffsetGuard`; a finding logs CRITICAL
    and crashes the app (non-zero exit).

    Call it when the app is declared: the first assignment must be seen (installed later, the
    first membership seen can already be the restarted broker's, with nothing to compare). The
    commit path is wrapped at the first assignment, before anything can be committed."""

    def thread() -> Any:
        return app.consumer._thread  # Faust's aiokafka consumer thread (owns the connection)

    def membership() -> tuple[int, str]:
        # Two attribute reads from another thread: aiokafka resets both before a rejoin and
        # sets the member id before the generation, so a torn read looks "between joins".
        coordinator = thread()._ensure_consumer()._coordinator
        return coordinator.generation, coordinator.member_id

    async def fetch(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        consumer_thread = thread()
        aio = consumer_thread._ensure_consumer()

        async def in_thread() -> dict[tuple[str, int], int | None]:
            return {tp: await aio.committed(TopicPartition(*tp)) for tp in tps}

        return await consumer_thread.call_thread(in_thread)

    guard = OffsetGuard(input_topic, fetch, membership)

    async def crash(exc: BrokerLostOffsets) -> None:
        log.critical("%s", exc)
        await app.crash(exc)

    def guard_commits(consumer: Any) -> None:
        original = consumer._commit

        async def commit(offsets: Mapping[Any, int]) -> bool:
            try:
                return await guard.guarded_commit(offsets, lambda: original(offsets))
            except BrokerLostOffsets as exc:
                await crash(exc)
                return False

        # Faust's only commit path without transactions: _commit_offsets flushes the
        # producer, then calls _commit (the OffsetCommit).
        consumer._commit = commit
        consumer.__dict__[_GUARDED] = True

    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        consumer = app.consumer
        if not consumer.__dict__.get(_GUARDED):
            guard_commits(consumer)
        try:
            guard.check_membership()
        except BrokerLostOffsets as exc:
            await crash(exc)

    app.on_partitions_assigned.connect(on_assigned)
    return guard
