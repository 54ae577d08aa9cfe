"""A broker that lost its state must not go unnoticed.

The embedded broker keeps everything in memory: after it restarts, the input offsets this worker
committed are gone from the group, and consuming on from the old in-memory positions would
silently skip every new record below them. On each assignment the worker compares the
partitions it has committed offsets for with those the broker still knows, and crashes
(non-zero exit, CRITICAL log) when some are missing, so a supervisor starts a fresh worker.

Upstream: tansu memory storage (by design, not a bug); aiokafka's group-offset listing fails on
tansu, so the committed offsets are read with kafka-python (no issue filed from here).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from topologies.faust_fixes import consumer_internals
from topologies.kafka_io import security_kwargs
from topologies.settings import KafkaSettings

log = logging.getLogger(__name__)


class BrokerOffsetCheck:
    """Install with ``BrokerOffsetCheck(app, settings).install()``."""

    def __init__(self, app: faust.App, settings: KafkaSettings) -> None:
        self.app = app
        self.settings = settings
        self.had_commits: set[tuple[str, int]] = set()
        """Input partitions this worker has committed offsets for (Faust forgets them on
        revoke, so they are remembered here on every assignment and every few seconds)."""

    def install(self) -> BrokerOffsetCheck:
        self.app.on_partitions_assigned.connect(self.on_assigned)
        self.app.timer(interval=5.0)(self.remember)
        return self

    async def remember(self) -> None:
        input_topic = self.settings.input_topic
        self.had_commits.update(
            (tp.topic, tp.partition)
            for tp, off in consumer_internals.committed_offsets(self.app.consumer).items()
            if off is not None and tp.topic == input_topic)

    async def on_assigned(self, sender: Any, assigned: set, **kwargs: Any) -> None:
        ours = {(tp.topic, tp.partition) for tp in assigned
                if tp.topic == self.settings.input_topic}
        await self.remember()
        expected = ours & self.had_commits
        if not expected:
            return
        try:
            on_broker = await asyncio.get_running_loop().run_in_executor(None, self.group_offsets)
        except Exception as exc:  # broker unreachable right now: the next rebalance checks again
            log.warning("could not read committed offsets to check the broker: %r", exc)
            return
        missing = sorted(expected - on_broker)
        if missing:
            message = (f"the broker lost this group's committed offsets for {missing} (restarted "
                       f"with memory storage?): stopping instead of silently skipping input")
            log.critical(message)
            await self.app.crash(RuntimeError(message))

    def group_offsets(self) -> set[tuple[str, int]]:
        """(topic, partition) with a committed offset for this app's group, read with
        kafka-python (aiokafka's group-offset listing fails on tansu)."""
        from kafka import KafkaAdminClient

        s = self.settings
        admin = KafkaAdminClient(bootstrap_servers=s.bootstrap_servers,
                                 request_timeout_ms=5_000, **security_kwargs(s))
        try:
            offsets = admin.list_group_offsets(s.app_id)[s.app_id]
        finally:
            admin.close()
        return {(tp.topic, tp.partition) for tp, meta in offsets.items() if meta.offset >= 0}
