"""Unit tests of single Faust workarounds (topologies/faust_fixes): each against Faust's own
objects or a broker, without the restarted echo worker of tests/test_faust_fixes.py."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from topologies.faust_fixes import (
    batch_changelog,
    install_fetch_max_wait,
    install_full_producer_flush,
    stop_debug_logging_after_startup,
    uninstall_full_producer_flush,
)


def test_root_logger_leaves_debug_after_startup():
    """Faust's worker leaves the root logger at DEBUG after its start-up spinner; afterwards
    it must log at the level of the handlers that print (WARNING here), and a DEBUG handler
    (``-l debug``) keeps it at DEBUG."""
    import asyncio
    import logging

    from faust.utils import terminal

    root = logging.Logger("test-root")
    printing = logging.StreamHandler()
    printing.setLevel(logging.WARNING)
    root.addHandler(printing)
    root.addHandler(terminal.SpinnerHandler(terminal.Spinner(), level=logging.DEBUG))
    root.setLevel(logging.DEBUG)
    asyncio.run(stop_debug_logging_after_startup(root))
    assert root.level == logging.WARNING and not root.isEnabledFor(logging.DEBUG)
    printing.setLevel(logging.DEBUG)
    root.setLevel(logging.DEBUG)
    asyncio.run(stop_debug_logging_after_startup(root))
    assert root.level == logging.DEBUG


def test_worker_consumer_gets_the_configured_fetch_max_wait(monkeypatch: pytest.MonkeyPatch):
    """Faust hard-codes fetch_max_wait_ms=1500 for its worker consumer; the patch replaces it
    (installing twice: the last value, no double wrapping)."""
    import asyncio

    import faust
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from topologies.faust_fixes.fetch_max_wait import _FETCH_WAIT_MARKER

    # Importing topologies.app (another test, a doctest) installs the patch process-wide:
    # start from Faust's own method; monkeypatch puts the installed one back afterwards.
    original = getattr(AIOKafkaConsumerThread, _FETCH_WAIT_MARKER, None)
    if original is not None:
        monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer", original)
        monkeypatch.delattr(AIOKafkaConsumerThread, _FETCH_WAIT_MARKER)

    app = faust.App(f"t-fetch-{uuid.uuid4().hex[:6]}", broker="kafka://127.0.0.1:1",
                    store="memory://")

    async def created() -> int:
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()

    assert asyncio.run(created()) == 1500  # Faust's own value
    install_fetch_max_wait(77)
    install_fetch_max_wait(66)
    assert asyncio.run(created()) == 66


def test_producer_flush_waits_for_every_buffered_message():
    """Faust's ``ProducerBuffer.flush`` returns after 0.1 s without a message sent, buffer not
    empty: a commit right after it would overtake the table writes still queued. With the fix
    it returns only once every message was handed on, slow sends included."""
    import asyncio

    from faust.transport.producer import ProducerBuffer

    async def flush_slow_sends() -> tuple[int, int]:
        handed_on: list[int] = []

        class SlowChannel:
            async def publish_message(self, fut: Any, wait: bool = False) -> None:
                await asyncio.sleep(0.15)  # longer than Faust's 0.1 s per message
                handed_on.append(fut.n)

        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        await buffer.start()
        for n in range(4):
            buffer.put(SimpleNamespace(message=SimpleNamespace(channel=SlowChannel()), n=n))
        await buffer.flush()
        result = (len(handed_on), buffer.size)
        while len(handed_on) < 4:  # let the stop find an empty buffer
            await asyncio.sleep(0.05)
        await buffer.stop()
        return result

    install_full_producer_flush()
    try:
        assert asyncio.run(flush_slow_sends()) == (4, 0)
    finally:
        uninstall_full_producer_flush()
    assert asyncio.run(flush_slow_sends()) != (4, 0)  # Faust's own flush gives up early


@pytest.mark.kafka
def test_recovery_highwaters_are_the_real_end_of_multi_record_batches(broker: Any) -> None:
    """Three produce batches of 10 records in each of two partitions: the highwaters table
    recovery reads up to are 30 (tansu's ListOffsets answers 21, the first offset of the
    last batch + 1: recovery would stop 9 records short)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from topologies.faust_fixes.recovery_highwaters import _highwaters
    from topologies.kafka_io import create_topics

    topic = f"hw-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, {topic: 2})
    tps = [TopicPartition(topic, p) for p in range(2)]

    async def scenario() -> tuple[dict[Any, int], dict[Any, int]]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for _ in range(3):
                for tp in tps:
                    batch = producer.create_batch()
                    for i in range(10):
                        batch.append(key=None, value=b"v%d" % i, timestamp=None)
                    await (await producer.send_batch(batch, topic, partition=tp.partition))
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            thread = SimpleNamespace(_ensure_consumer=lambda: consumer,
                                     consumer=SimpleNamespace(in_transaction=False))
            latest = dict(await consumer.end_offsets(tps))
            return latest, dict(await _highwaters(thread, tps))
        finally:
            await consumer.stop()

    latest, highwaters = asyncio.run(scenario())
    print(f"ListOffsets latest {latest}, recovery highwaters {highwaters}")
    assert highwaters == {tp: 30 for tp in tps}
    assert all(latest[tp] <= 30 for tp in tps)


def test_changelog_batch_sends_a_tables_writes_together_in_order():
    """A table made with ``batch_changelog`` keeps its writes (no producer buffer) until
    ``send``: then one producer batch per partition (another when one is full), in write order
    within each partition, the store told the last offset of each, and a failed batch raises."""
    import asyncio

    import faust

    class Builder:  # aiokafka's BatchBuilder, holding at most two records
        def __init__(self) -> None:
            self.records: list[tuple[bytes, bytes | None]] = []

        def append(self, *, timestamp: Any, key: bytes, value: bytes | None) -> Any:
            if len(self.records) == 2:
                return None
            self.records.append((key, value))
            return object()

        def record_count(self) -> int:
            return len(self.records)

    class Producer:  # Faust's producer and the aiokafka one behind it
        def __init__(self) -> None:
            self.batches: list[tuple[int, list[tuple[bytes, bytes | None]]]] = []
            self.end: dict[int, int] = {}
            self.fail = False

        def key_partition(self, topic: str, key: bytes) -> Any:
            return SimpleNamespace(partition=int(key[-1:]) % 2)

        def _ensure_producer(self) -> Any:
            return self

        def create_batch(self) -> Builder:
            return Builder()

        async def send_batch(self, builder: Builder, topic: str, *, partition: int) -> Any:
            base = self.end.get(partition, 0)
            self.end[partition] = base + builder.record_count()
            self.batches.append((partition, builder.records))
            acked = asyncio.get_running_loop().create_future()
            if self.fail:
                acked.set_exception(RuntimeError("broker said no"))
            else:
                acked.set_result(SimpleNamespace(offset=base))
            return acked

    async def run() -> tuple[Any, ...]:
        app = faust.App(f"t-batch-{uuid.uuid4().hex[:6]}", broker="kafka://127.0.0.1:1",
                        store="memory://")
        table = app.Table("t", default=None, partitions=2, use_partitioner=True,
                          key_type=bytes, value_type=bytes)
        producer = Producer()
        app._producer = producer  # Faust's send_soon would fail on it: nothing goes there
        writes = batch_changelog(table)
        persisted: dict[int, int] = {}
        table.data.set_persisted_offset = lambda tp, offset: persisted.update(
            {tp.partition: offset})
        for i in range(5):
            table[f"k{i}".encode()] = f"v{i}".encode()
        del table[b"k0"]
        held = (len(writes.pending), list(producer.batches))
        sent = await writes.send()
        batches = list(producer.batches)
        table[b"k9"] = b"v9"
        producer.fail = True
        with pytest.raises(RuntimeError, match="broker said no"):
            await writes.send()
        return held, sent, batches, persisted, writes.sent, table[b"k2"]

    held, sent, batches, persisted, total, value = asyncio.run(run())
    assert held == (6, [])
    assert sent == 6 and total == 6 and value == b"v2"
    assert batches == [(0, [(b"k0", b"v0"), (b"k2", b"v2")]), (0, [(b"k4", b"v4"), (b"k0", None)]),
                       (1, [(b"k1", b"v1"), (b"k3", b"v3")])]
    assert persisted == {0: 3, 1: 1}
