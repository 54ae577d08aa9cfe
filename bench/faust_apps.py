"""Do-nothing Faust apps for the kafka benchmark: what the consumption path alone costs.

``python -m faust -A bench.faust_apps:stock worker`` reads the input topic the stock Faust way
(``kafka://``, ``async for value in stream``, one event per record); ``...:chunked`` reads it
through the chunk transport (``chunks://``, one event per fetched partition chunk). Both do
what the bare loop does per record (``orjson.loads``) and nothing else: they count records and
send a marker record to the topic
``BENCH_DONE_TOPIC`` when they see the first record and when the count reaches
``BENCH_EXPECTED``, so the benchmark times them by the markers' CreateTime, as it times the
worker by its outputs'. Same settings as the worker (``FEEDBACK_STREAM_*``), same Faust fixes.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import faust
import orjson

from topologies import faust_fixes
from topologies.faust_config import faust_config
from topologies.settings import KafkaSettings

DONE_TOPIC_ENV = "BENCH_DONE_TOPIC"
EXPECTED_ENV = "BENCH_EXPECTED"

settings = KafkaSettings.from_env()
faust_fixes.install_recovery_seek_fix()
faust_fixes.install_fetch_max_wait(settings.fetch_max_wait_ms)
faust_fixes.install_fetch_hole_rewind()
faust_fixes.install_chunk_transport()
_expected = int(os.environ.get(EXPECTED_ENV, "0"))
_servers = settings.bootstrap_servers or "127.0.0.1:9092"


def _app(name: str, scheme: str) -> tuple[faust.App, faust.TopicT, faust.TopicT]:
    config = {**faust_config(settings), "broker": f"{scheme}://{_servers}"}
    app = faust.App(f"{settings.app_id}-{name}", **config)
    source = app.topic(settings.input_topic, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    done = app.topic(os.environ.get(DONE_TOPIC_ENV, "bench-done"), key_serializer="raw",
                     value_serializer="raw")
    return app, source, done


class Counter:
    """Decodes and counts records; sends ``first`` on the first, ``last`` once all arrived."""

    def __init__(self, done: faust.TopicT) -> None:
        self.done, self.n = done, 0

    async def add(self, values: list[bytes]) -> None:
        for value in values:
            with contextlib.suppress(orjson.JSONDecodeError):  # as in the bare loop
                orjson.loads(value)
        n = len(values)
        before, self.n = self.n, self.n + n
        if before == 0:
            await self.done.send(key=b"first", value=b"%d" % self.n)
        if before < _expected <= self.n:
            await self.done.send(key=b"last", value=b"%d" % self.n)


stock, _stock_source, _stock_done = _app("stock", "kafka")
_stock_count = Counter(_stock_done)


@stock.agent(_stock_source)
async def stock_count(stream: Any) -> None:
    async for value in stream:
        await _stock_count.add([value])


chunked, _chunked_source, _chunked_done = _app("chunked", faust_fixes.CHUNK_SCHEME)
faust_fixes.chunk_topics(chunked, [settings.input_topic], settings.batch_size)
_chunked_count = Counter(_chunked_done)


@chunked.agent(_chunked_source)
async def chunked_count(stream: Any) -> None:
    async for chunk in faust_fixes.chunks(stream):
        await _chunked_count.add([r.value for r in chunk.records])
