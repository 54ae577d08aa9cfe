"""Table recovery reads each changelog to its real end, not to the broker's "latest offset".

Faust recovers a table by reading its changelog partitions up to the highwaters it asks the
broker for (``AIOKafkaConsumerThread._highwaters``: ListOffsets "latest"). The embedded tansu
broker answers that with the first offset of the partition's last stored batch + 1, not the
end: with multi-record batches recovery stopped early (restored counts stale, or Faust's
ConsistencyError). The worker therefore wrote every changelog record as a batch of its own
(``producer_max_batch_size=1``), which made each table write a produce request of its own:
Faust's producer buffer sending them one by one was a tenth of the worker's samples at 300
ev/s, and its conductor held the agents back for seconds (bench/README.md).

Here the highwater of each partition is the larger of that answer and the high watermark of
a Fetch response (one request per broker, from the partition's last batch, so always a valid
offset that has data): Fetch responses carry the right end on
tansu, and on a real Kafka both agree. Changelogs then go out in normal batches.

Upstream: tansu ListOffsets (no tansu issue filed from here, seen on tansu 0.6.0); Faust's
``AIOKafkaConsumerThread._highwaters`` replaced (used only by table recovery).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any

_MARKER = "_feedback_stream_recovery_highwaters"


async def fetch_high_watermarks(consumer: Any, tps: Iterable[Any],
                                fetch_from: Mapping[Any, int]) -> dict[Any, int]:
    """High watermark per partition from one no-wait Fetch per leader (``consumer``: an
    aiokafka consumer; ``fetch_from``: a valid offset per partition). Partitions whose fetch
    failed are left out."""
    from aiokafka.protocol.fetch import FetchRequest
    from aiokafka.structs import TopicPartition

    client = consumer._client
    by_leader: dict[int, dict[str, list[tuple[int, int, int]]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for tp in tps:
        leader = client.cluster.leader_for_partition(TopicPartition(tp.topic, tp.partition))
        if leader is None or leader == -1:
            continue
        by_leader[leader][tp.topic].append((tp.partition, fetch_from.get(tp, 0), 65536))
    found: dict[Any, int] = {}
    wanted = {(tp.topic, tp.partition): tp for tp in tps}
    for leader, topics in by_leader.items():
        # min_bytes 1: tansu answers a fetch that may return nothing (min_bytes 0) with no
        # partitions at all. There is data at ``fetch_from`` (the last batch) unless the
        # partition is empty, where the broker holds the answer for max_wait (100 ms).
        request = FetchRequest(100, 1, 1024 * 1024, 0, list(topics.items()))
        response = await client.send(leader, request)
        for topic, partitions in response.topics:
            for partition, error_code, highwater, *_ in partitions:
                tp = wanted.get((topic, partition))
                if tp is not None and error_code == 0 and highwater >= 0:
                    found[tp] = highwater
    return found


async def _highwaters(self: Any, partitions: list[Any]) -> Mapping[Any, int]:
    # faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._highwaters, plus the Fetch.
    consumer = self._ensure_consumer()
    if self.consumer.in_transaction:
        return {tp: consumer.last_stable_offset(tp) for tp in partitions}
    latest: dict[Any, int] = dict(await consumer.end_offsets(partitions))
    from_last_batch = {tp: max(offset - 1, 0) for tp, offset in latest.items()
                       if offset is not None}
    fetched = await fetch_high_watermarks(consumer, partitions, from_last_batch)
    return {tp: max(offset, fetched.get(tp, offset)) if offset is not None else offset
            for tp, offset in latest.items()}


def install_recovery_highwaters() -> None:
    """Replace Faust's recovery highwaters with the Fetch-checked ones (idempotent)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    cls: Any = AIOKafkaConsumerThread
    if getattr(cls, _MARKER, None) is None:
        setattr(cls, _MARKER, cls._highwaters)
        cls._highwaters = _highwaters


def uninstall_recovery_highwaters() -> None:
    """Faust's own highwaters again (tests)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    cls: Any = AIOKafkaConsumerThread
    original = getattr(cls, _MARKER, None)
    if original is not None:
        cls._highwaters = original
        delattr(cls, _MARKER)
