"""Output records go through a dedicated aiokafka producer with normal batching.

Faust's own producer carries only the table writes (a chunk's worth at a time,
``faust_fixes.changelog_batches``); outputs are sent here in bulk. Agents ``await
publish(...)`` at the end of each batch, before Faust acks the batch's input events, so an
input's offset is committed only after its outputs are in Kafka: at-least-once, with idempotent
keys.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from stream.records import Output
from topologies.kafka_io import security_kwargs
from topologies.settings import KafkaSettings

log = logging.getLogger(__name__)


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future


class OutputPublisher:
    def __init__(self, settings: KafkaSettings, topic_for: Callable[[str], str],
                 retries: int = 5, on_error: Callable[[str], None] | None = None,
                 on_retry: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.topic_for = topic_for
        self.retries = retries
        self.on_error = on_error or (lambda topic: None)
        self.on_retry = on_retry or (lambda: None)
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.bootstrap_servers, linger_ms=5,
                    max_batch_size=256 * 1024, acks="all", request_timeout_ms=30_000,
                    retry_backoff_ms=200, **security_kwargs(self.settings, "aiokafka"))
                await producer.start()
                self._producer = producer
        return self._producer

    async def publish(self, outputs: list[Output]) -> None:
        """Send every output and wait until Kafka acknowledged all of them.

        A failed send is retried (with aiokafka's own retries inside each attempt; ``on_retry``
        once per retried round); after ``retries`` failed rounds ``on_error`` is called once
        per record still undelivered, the error propagates, the agent stops and the batch's
        input is not acknowledged, so a restarted worker processes it again. Nothing is
        dropped.
        """
        if not outputs:
            return
        producer = await self._started()
        pending = [(self.topic_for(o.stream), o.key.encode(), orjson.dumps(o.record))
                   for o in outputs]
        for attempt in range(self.retries + 1):
            # Sends are queued one after another (the order of records with one key must be
            # kept); only the acknowledgements are awaited together.
            acks: list[Any] = []
            for topic, key, value in pending:
                try:
                    acks.append(await producer.send(topic, value=value, key=key))
                except KafkaError as exc:  # raised by send() itself: too large, no topic...
                    acks.append(_failed(exc))
            results = await asyncio.gather(*acks, return_exceptions=True)
            failed = [item for item, res in zip(pending, results, strict=True)
                      if isinstance(res, BaseException)]
            if not failed:
                return
            error = next(r for r in results if isinstance(r, BaseException))
            if attempt == self.retries or not isinstance(error, KafkaError):
                # Counted only here: a record that a retry delivers (e.g. while the broker
                # creates a missing topic) was produced, and shows in the retry counter.
                for topic, _, _ in failed:
                    self.on_error(topic)
                raise error
            log.warning("%d of %d output records failed (%r); retry %d of %d",
                        len(failed), len(pending), error, attempt + 1, self.retries)
            self.on_retry()
            pending = failed
            await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
