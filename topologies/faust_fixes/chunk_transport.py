"""Faust delivers one event per Kafka record; this transport delivers one per fetched chunk.

Why: stock Faust spends ~80 us per record before an agent sees it (measured on tansu, 200k
records: 13k records/s, 0.02x a bare aiokafka ``getmany`` loop): ``Consumer._drain_messages``
wraps every record in ``wait_first(...)`` (4 tasks, 5 futures), the channel queue's flow
control pauses and resumes partitions over and over, the stream awaits its channel and calls
the sensors per record. Batching after that (``take_events``) cannot win any of it back.

What: the ``chunks://`` transport (``Transport`` with ``ChunkConsumer``; register it with
:func:`install_chunk_transport`) hands each chunk topic's agent ONE event per fetch (the
records of all its partitions in that fetch, each partition's together and in offset order),
cut into chunks of at most ``max_records`` records: ``event.value`` is the list of aiokafka
``ConsumerRecord`` objects (key, value, partition, offset, topic, timestamp; raw bytes,
decoded by the agent, so one bad record does not drop its chunk). One chunk per fetch, not
per partition: an agent pays fixed costs per chunk (the worker: two produce round trips),
and at 300 events/s over 4 partitions a fetch held a few records per partition. Agents iterate
:func:`chunks`. Under low load a fetch holds what arrived meanwhile, so chunks stay small (no
batch timer adds latency). Topics not registered with :func:`chunk_topics` (changelogs,
anything else) keep Faust's per-record path unchanged.

How the offsets stay exact (tests/test_chunk_transport.py; tests/test_faust_fixes.py restarts
an app on it mid-stream; the worker's fault tests run on it, see docs/operations.md):

- A chunk's offsets become committable only when the agent finished it: :func:`chunks` marks
  the chunk done when the agent asks for the next one, and the acknowledgement then adds every
  offset first..last to Faust's acked offsets at once. A chunk Faust acknowledges without the
  agent seeing it (its stream skips events fetched before a rebalance) is not marked done and
  commits nothing: it is fetched again after the seek to the committed offsets. Faust's
  Cython stream iterator inlines ``Consumer.ack`` (a chunk would count as its last offset
  alone), so :func:`chunks` drives the pure-Python one. (First..last-1 in Faust's gap
  structure instead would let the gap of a chunk dropped by a rebalance commit records of a
  later, differently cut chunk before they were processed.)
- Faust's ``on_partitions_revoked`` drops the revoked partitions' acks before its own
  revoke-time commit (faust-streaming 0.15.3): without a commit first, a rebalance made the
  new owner re-process every chunk finished since the last commit (11k-25k records per
  rebalance measured). ``ChunkConsumer`` commits first.
- Chunks are cut inside the drain loop, not with ``broker_max_poll_records`` (that costs a
  hand-off from Faust's consumer thread per fetch: ~100k records/s measured).

Consequences for agents on chunk topics: sensors count chunks, not records; ``group_by`` and
``forward`` would operate on chunks (repartition with explicit sends instead); a table written
from such an agent needs ``use_partitioner=True`` (Faust's default writes a key's changelog
record to the partition of the current event, here the chunk's last record's, so a restart
restored keys from the wrong partitions: the echo app's counts came out 30-66 short).

Upstream: no faust-streaming issue filed from here. Uses these private internals of
faust-streaming 0.15.3 (pinned in pyproject.toml): ``Consumer._drain_messages`` (replaced),
``_wait_next_records``, ``_read_offset``, ``_committed_offset``, ``_acked``, ``_acked_index``,
``_n_acked``, ``_unacked_messages``, ``_waiting_for_ack``, ``_add_gap``, ``_commit_every``,
``_buffered_partitions``, ``faust.types.tuples.ack_lock``; ``Stream._py_aiter``,
``Stream._active_agens``.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Iterable
from typing import Any, ClassVar, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ConsumerMessage, ack_lock
from mode.utils.futures import notify

CHUNK_SCHEME = "chunks"
"""The broker URL scheme of this transport: ``chunks://host:port``."""

_chunked: weakref.WeakKeyDictionary[Any, tuple[frozenset[str], int]] = (
    weakref.WeakKeyDictionary())
"""App -> (names of its chunk topics, max records per chunk)."""


def install_chunk_transport() -> None:
    """Register ``chunks://`` with Faust's transport registry (idempotent); the app resolves
    its broker URL's scheme when it first creates its transport."""
    from faust.transport.drivers import TRANSPORTS

    TRANSPORTS.aliases[CHUNK_SCHEME] = f"{__name__}:Transport"


def chunk_topics(app: Any, topics: Iterable[str], max_records: int) -> None:
    """Deliver ``topics`` of ``app`` in chunks of at most ``max_records`` records."""
    if max_records < 1:
        raise ValueError(f"max_records must be >= 1, not {max_records}")
    _chunked[app] = (frozenset(topics), max_records)


def queue_one_chunk(topic: Any) -> None:
    """Let the agent of ``topic`` (a Faust ``Topic``) queue at most one chunk.

    Why: Faust's ``app.topic()`` drops its ``maxsize`` argument (faust-streaming 0.15.3; no
    issue filed from here), so every agent's queue holds ``stream_buffer_maxsize`` (4,096)
    events: with the agent behind, the drain loop kept fetching and the queue filled with
    hundreds of chunks of a few records each (measured at 300 events/s: 338 chunks queued,
    1-9 records each, the oldest 6 s old), each paying the agent's fixed cost per chunk (two
    produce round trips). With one queued chunk the drain loop waits for the agent (Faust's
    conductor awaits the full queue), the backlog stays in the broker, and the next fetch takes
    it as one chunk. The attribute is what Faust's own ``Channel(maxsize=...)`` sets; every
    clone (the agent's stream channel) copies it.
    """
    topic.maxsize = 1


class ChunkMessage(ConsumerMessage):
    """A chunk as one Faust message: ``value`` is the list of records, those of one partition
    together and in offset order; ``spans`` (partition, first offset, last offset) per
    partition. Faust's own fields (``tp``, ``offset``) are those of the last record; ``first``
    is the first record's offset."""

    __slots__ = ("first", "done", "spans")

    def __init__(self, tp: TP, records: list[Any], generation_id: int | None) -> None:
        last = records[-1]
        size = sum(r.serialized_value_size for r in records)
        super().__init__(last.topic, last.partition, last.offset, last.timestamp / 1000.0,
                         last.timestamp_type, None, None, cast(Any, records), None,
                         serialized_key_size=0, serialized_value_size=size, tp=tp,
                         generation_id=generation_id)
        self.first: int = records[0].offset
        self.spans: list[tuple[TP, int, int]] = []
        for record in records:
            if self.spans and self.spans[-1][0].partition == record.partition:
                self.spans[-1] = (self.spans[-1][0], self.spans[-1][1], record.offset)
            else:
                self.spans.append((TP(record.topic, record.partition), record.offset,
                                   record.offset))
        self.done = False
        """Set by :func:`chunks` once the agent finished the chunk; only then does its
        acknowledgement make its offsets committable."""

    @property
    def records(self) -> list[Any]:
        """The chunk's records (aiokafka ``ConsumerRecord``), in offset order."""
        return cast(list[Any], self.value)


async def chunks(stream: Any) -> AsyncIterator[ChunkMessage]:
    """Each chunk delivered to ``stream`` (an agent's stream over chunk topics): ``records``,
    and Faust's ``time_in`` (monotonic time the consumer received it).

    The chunk counts as processed when the agent asks for the next one (the loop body
    finished without raising); Faust acknowledges it right after. Faust's pure-Python stream
    iterator, not its Cython one: that one inlines ``Consumer.ack`` (it would commit a chunk
    as its last offset alone); per chunk its speed does not matter.
    """
    iterator = stream._py_aiter()
    stream._active_agens.add(iterator)  # Faust closes it when the stream stops
    async for _value in iterator:
        message = stream.current_event.message
        yield message
        message.done = True


class ChunkConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, delivering chunk topics a partition chunk per event."""

    def _chunking(self) -> tuple[frozenset[str], int]:
        return _chunked.get(self.app, (frozenset(), 1))

    def ack(self, message: Any) -> bool:
        """Faust's ``Consumer.ack`` for a chunk: all its offsets at once, or none (module
        docstring)."""
        if not isinstance(message, ChunkMessage):
            return super().ack(message)
        with ack_lock:
            if message.acked:
                return False
            message.acked = True
            self._unacked_messages.discard(message)
            try:
                if not message.done or not self.app.topics.acks_enabled_for(message.topic):
                    return False
                added = 0
                for tp, first, last in message.spans:
                    committed = self._committed_offset[tp]
                    if committed is not None:
                        first = max(first, committed)
                    index = self._acked_index[tp]
                    new = [o for o in range(first, last + 1) if o not in index]
                    index.update(new)
                    self._acked[tp].extend(new)
                    added += len(new)
                self._n_acked += added
                return bool(added)
            finally:
                notify(self._waiting_for_ack)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # Commit what the agents finished before Faust drops the revoked partitions' acks.
        await self.maybe_wait_for_commit_to_finish()
        await self.commit()
        await super().on_partitions_revoked(revoked)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's ``Consumer._drain_messages`` (0.15.3) with chunk topics delivered in
        chunks; the records of other topics go through Faust's per-record steps unchanged."""
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)  # Faust's: a fetch loop must yield to the event loop
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:
                    # Faust's getmany: records fetched while the flow is stopped are dropped
                    # and the partitions sought back to the committed offsets (which fails
                    # for partitions revoked meanwhile: logged, as Faust does).
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning("exception performing seek when flow not active %r",
                                         exc)
                    continue
                await self._deliver(records, active)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _deliver(self, records: dict[TP, list[Any]], active: set[TP] | None) -> None:
        topics, max_records = self._chunking()
        generation_id = self.app.consumer_generation_id
        # Per chunk topic, the fetched records of all its partitions (each partition's
        # together), cut into chunks of at most max_records: an agent pays its fixed costs per
        # chunk (two produce round trips), so per fetch, not per partition.
        pending: dict[str, list[Any]] = {}
        for tp, batch in records.items():
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                return  # a rebalance began: Faust's getmany stops delivering, too
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic not in topics:
                for record in batch:
                    message = self._to_message(tp, record)
                    offset = message.offset
                    await self._deliver_one(message, [(tp, offset, offset, offset)])
                continue
            read = self._read_offset[tp]
            if read is not None:
                batch = [r for r in batch if r.offset >= read]  # Faust drops these too
            pending.setdefault(tp.topic, []).extend(batch)
        for part in pending.values():
            for start in range(0, len(part), max_records):
                if not self.flow_active or self.app.consumer_generation_id != generation_id:
                    return
                cut = part[start:start + max_records]
                chunk = ChunkMessage(TP(cut[-1].topic, cut[-1].partition), cut,
                                     generation_id)
                await self._deliver_one(chunk, [(tp, first, first - 1, last)
                                                for tp, first, last in chunk.spans])

    async def _deliver_one(self, message: Any, spans: list[tuple[TP, int, int, int]]) -> None:
        """One message through Faust's drain steps; ``spans``: per partition (first offset,
        end of a hole before it, last offset). Skip what was read already, record a hole
        before it as a gap (up to the hole's end: Faust puts a record's own offset in, a
        chunk's first offset stays out), commit every ``broker_commit_every`` acks, hand it to
        the conductor unless the flow is suspended meanwhile."""
        acks_enabled = self.app.topics.acks_enabled_for(message.topic)
        for tp, _first, _gap_to, last in spans:
            read = self._read_offset[tp]
            if read is not None and last < read:
                return  # a chunk's records were filtered against it: only records get here
        for tp, first, gap_to, _last in spans:
            read = self._read_offset[tp]
            if read and first - read > 1 and acks_enabled:
                await self._add_gap(tp, read + 1, gap_to)
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()
        await self.wait_first(self.callback(message), self.suspend_flow.wait())
        for tp, _first, _gap_to, last in spans:
            self._read_offset[tp] = last


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`ChunkConsumer` (``chunks://`` URLs)."""

    Consumer: ClassVar[type] = ChunkConsumer  # type: ignore[misc]
