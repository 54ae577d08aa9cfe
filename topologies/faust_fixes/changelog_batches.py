"""A chunk's table writes go to the producer together and are awaited together, instead of
through Faust's producer buffer one message at a time.

Why: Faust's tables put every changelog record into ``ProducerBuffer``, whose background
task hands them to aiokafka one by one (each waiting for the previous one to be appended, and
for a produce round trip whenever a partition's batch is full), and Faust's conductor holds
every agent's next event until that buffer is back under 100 records. The worker writes ~3
changelog records per input event (device sessions, their undo entries, seen-events rows,
estimates), so at 300 events/s the buffer drained no faster than it filled: traced per chunk
on a loaded machine, the agents' own work (core, outputs, table writes) took 10-100 ms while
the buffer held 300-1,240 records and the conductor held the chunks back, and the end-to-end
p50 was 1.4-1.6 s against the transport's 30 ms (bench/README.md).

What: :func:`batch_changelog` makes one table keep its changelog records (Faust's own
``FutureMessage``, partition chosen eagerly as Faust does) in a list of its own instead of the
producer buffer; :meth:`ChangelogBatch.send` hands all of them to Faust's producer in write
order (``Topic.publish_message`` without waiting for each acknowledgement: aiokafka appends
them to its batches) and then waits for all acknowledgements at once. Faust's callbacks
(``Collection._on_changelog_sent``, sensors) run as before.

Guarantees (the worker calls ``send`` in its agent, after the chunk's outputs were
acknowledged and before it asks for the next chunk):

- the offset commit cannot run ahead of the table writes: a chunk's offsets become
  committable only when the agent finished it (``chunk_transport``), i.e. after ``send``
  returned; the full flush before each commit (``producer_flush``) stays for anything else;
- order: one table is written by one agent, each ``send`` is awaited before the next chunk's
  writes, and aiokafka keeps the order of one partition (one request in flight per broker),
  so a crash leaves a prefix of each changelog partition's writes, as the undo entries
  expect (``topologies/processors/undo.py``); tables sent one after another (``send`` awaited
  in turn) land in that order;
- a failed write raises from ``send``: the agent stops the worker with the chunk
  unacknowledged, and a restarted worker processes it again.

A write made and never sent would sit in the list: every table made with
:func:`batch_changelog` must be sent by the agent that writes it, within the chunk.

Upstream: Faust's ``Collection.send_changelog`` always goes through ``ProducerBuffer`` (no
faust-streaming issue filed from here; faust-streaming 0.15.3). Replaced per table object
(the instance attribute shadows the method that ``Table.on_key_set`` / ``on_key_del`` call).
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.types import TP

CHANGELOG_BATCH_BYTES = 256 * 1024
"""Faust's producer batch size for the worker (``producer_max_batch_size``; Faust's default
16 KiB): a chunk's writes to one partition fit one batch, so one produce round trip, where a
batch that fills up waits for the one before it to be acknowledged."""


class ChangelogBatch:
    """The changelog records one table was given since its last :meth:`send`."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.pending: list[Any] = []
        """Faust ``FutureMessage`` objects in write order."""
        self.sent = 0
        """Records sent and acknowledged so far (tests, metrics)."""

    def collect(self, partition: int | None, key: Any, value: Any,
                key_serializer: Any = None, value_serializer: Any = None) -> Any:
        """``Collection.send_changelog`` (faust-streaming 0.15.3) minus the producer buffer."""
        table = self.table
        fut = table.changelog_topic.as_future_message(
            key=key, value=value, partition=partition,
            key_serializer=table.key_serializer if key_serializer is None else key_serializer,
            value_serializer=(table.value_serializer if value_serializer is None
                              else value_serializer),
            callback=table._on_changelog_sent,
            # As Faust's: on_key_set reads the final partition from the message at once.
            eager_partitioning=True)
        self.pending.append(fut)
        return fut

    async def send(self) -> int:
        """Send every collected record, then wait until all are acknowledged; returns how
        many. Raises the first failed write's error (the rest may have landed)."""
        pending, self.pending = self.pending, []
        if not pending:
            return 0
        table = self.table
        producer = table.app.producer._ensure_producer()  # Faust's aiokafka producer
        topic = table.changelog_topic.get_topic_name()
        # One aiokafka batch per partition (several if one outgrows the producer's batch
        # size): appending to a batch costs microseconds, Faust's per-message publish path
        # (sensors, a produce future and an await per record) ~0.25 ms.
        batches: dict[int, list[Any]] = {}
        for fut in pending:
            message = fut.message
            builders = batches.setdefault(message.partition, [])
            if not builders or builders[-1].append(
                    timestamp=None, key=message.key, value=message.value) is None:
                builders.append(producer.create_batch())
                builders[-1].append(timestamp=None, key=message.key, value=message.value)
        submitted = [(partition, builder) for partition, builders in batches.items()
                     for builder in builders]
        acks = []
        for partition, builder in submitted:
            # Waits only while an earlier batch of the same partition is in flight: the
            # batches of one partition go out in order.
            acks.append(await producer.send_batch(builder, topic, partition=partition))
        results = await asyncio.gather(*acks)
        # What Faust's Collection._on_changelog_sent does per record, once per partition: the
        # store remembers the last changelog offset it holds (a no-op for memory stores).
        last = {partition: meta.offset + builder.record_count() - 1
                for (partition, builder), meta in zip(submitted, results, strict=True)}
        for partition, offset in last.items():
            table.data.set_persisted_offset(TP(topic, partition), offset)
        self.sent += len(pending)
        return len(pending)


def batch_changelog(table: Any) -> ChangelogBatch:
    """Keep ``table``'s changelog records for :meth:`ChangelogBatch.send` (a Faust
    ``Table``; call before the app starts writing it)."""
    batch = ChangelogBatch(table)
    table.send_changelog = batch.collect
    return batch


async def send_in_turn(batches: list[ChangelogBatch]) -> int:
    """Send each table's records, each table acknowledged before the next one is sent."""
    sent = 0
    for batch in batches:
        sent += await batch.send()
    return sent
