"""Fast replay of a JSONL file (or stdin, or any iterable of lines) into a Kafka topic.

Records are keyed by a field of each line; valid watermark lines go to every partition; sends
are batched. Re-exported by ``topologies.kafka_io``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from stream.devices import end_watermark
from stream.settings import Settings
from topologies.kafka_security import KafkaIOError, _checked, check_tls, security_kwargs

_ORJSON_MAX_BRACKETS = 512
_MIN_TS, _MAX_TS = Settings.min_ts, Settings.max_ts


@dataclasses.dataclass
class ProduceStats:
    lines: int = 0
    """Input lines read; every one is sent."""
    messages: int = 0
    """Kafka records sent: lines + (partitions - 1) per watermark line."""
    unkeyed: int = 0
    """Lines sent once with a null key: not a JSON object, no string key field, or a watermark
    without a valid ``ts``."""
    watermarks: int = 0
    """Valid watermark lines, each sent to every partition."""
    newest_ts: int = 0
    """Largest valid ``ts`` of a non-watermark line."""
    end_watermark: int | None = None
    """With ``end_of_stream``: the ts of the closing watermark sent to every partition."""
    bytes: int = 0
    seconds: float = 0.0

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0


def _count_lines(path: Path) -> int | None:
    # ~1 GB/s; worth it for a progress bar with a total and an ETA.
    try:
        with open(path, "rb") as fh:
            count, last = 0, b"\n"
            while chunk := fh.read(1 << 20):
                count += chunk.count(b"\n")
                last = chunk[-1:]
            return count + (last != b"\n")
    except OSError:
        return None


def _read_in_daemon_thread(read: Any, size: int) -> asyncio.Future:
    # stdin may trickle (`tail -f | produce -`): a blocking read in the event loop would stall
    # aiokafka's sender, and an executor thread stuck in read() would block interpreter exit.
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if fut.done():  # cancelled meanwhile
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def run() -> None:
        try:
            result, error = read(size), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = b"", exc
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="produce-stdin", daemon=True).start()
    return fut


async def _line_batches(source: Any) -> Any:
    """Async iterator of lists of lines (bytes without the line ending)."""
    if not isinstance(source, str | os.PathLike):
        batch: list[bytes] = []
        for raw in source:
            batch.append((raw.encode() if isinstance(raw, str) else raw).rstrip(b"\r\n"))
            if len(batch) >= 1000:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    is_stdin = str(source) == "-"
    try:
        fh = sys.stdin.buffer if is_stdin else open(source, "rb")  # noqa: SIM115
    except OSError as exc:
        raise KafkaIOError(f"cannot read {source}: {exc}") from exc
    read = getattr(fh, "read1", fh.read)  # read1: whatever a pipe has now, up to the size
    rest = b""
    try:
        while True:
            try:
                # Files are read inline (fast), yielding to the loop once per 64 KiB chunk.
                chunk = await (_read_in_daemon_thread(read, 1 << 16) if is_stdin
                               else asyncio.sleep(0, read(1 << 16)))
            except OSError as exc:
                raise KafkaIOError(f"reading {source} failed: {exc}") from exc
            if not chunk:
                break
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            if lines:
                yield [line[:-1] if line.endswith(b"\r") else line for line in lines]
        if rest:
            yield [rest[:-1] if rest.endswith(b"\r") else rest]
    finally:
        if not is_stdin:
            fh.close()


def _loads(line: bytes) -> Any:
    if line.count(b"{") + line.count(b"[") > _ORJSON_MAX_BRACKETS:
        # orjson 3.8 has no depth limit: ~100k nested containers overflow the C stack and kill
        # the process (SIGSEGV). The stdlib parser raises RecursionError instead.
        return json.loads(line)
    return orjson.loads(line)


def _inspect(line: bytes, key_field: str) -> tuple[bytes | None, bool, float | None]:
    """(key, is a valid watermark, ts) of one line; unparsable lines give (None, False, None).

    Only a watermark with a valid ``ts`` (integer epoch ms within the schema's range) is
    broadcast; an invalid one is an ordinary bad line, sent once and dead-lettered once.
    """
    try:
        obj = _loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        return None, False, None
    if not isinstance(obj, dict):
        return None, False, None
    key, ts = obj.get(key_field), obj.get("ts")
    valid_ts = isinstance(ts, int) and not isinstance(ts, bool) and _MIN_TS <= ts <= _MAX_TS
    return (
        key.encode() if isinstance(key, str) and key else None,
        obj.get("type") == "watermark" and valid_ts,
        float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else None,
    )


class _Pacer:
    """Sleeps to honour an events/s cap and/or the original ``ts`` gaps (divided by speedup)."""

    def __init__(self, rate: float | None, speedup: float | None) -> None:
        self.rate = rate
        self.speedup = speedup
        self.started = time.monotonic()
        self.first_ts: float | None = None

    async def wait(self, sent: int, ts: float | None) -> None:
        if self.rate is None and self.speedup is None:
            return
        target = self.started
        if self.rate is not None:
            target = self.started + sent / self.rate
        if self.speedup is not None and ts is not None:
            if self.first_ts is None:
                self.first_ts = ts
            # Out-of-order (older) events are sent at once rather than delaying everything.
            target = max(target, self.started + (ts - self.first_ts) / 1000.0 / self.speedup)
        delay = target - time.monotonic()
        if delay > 0.001:
            await asyncio.sleep(delay)


async def produce_file_async(
    path_or_lines: str | os.PathLike[str] | Iterable[str | bytes],
    bootstrap: str,
    topic: str,
    *,
    rate: float | None = None,
    original_timing: bool = False,
    speedup: float = 1.0,
    progress: bool = True,
    key_field: str = "device_id",
    partitions: int | None = None,
    linger_ms: int = 5,
    end_of_stream: bool = False,
    settings: Settings | None = None,
    **security: str,
) -> ProduceStats:
    """Replay a JSONL file (``"-"`` = stdin, or any iterable of lines) into ``topic``.

    Each record is keyed by the line's ``key_field``. Lines that are not JSON objects or lack
    the key are still sent, with a null key: the worker dead-letters them, nothing is dropped.
    A line with ``"type": "watermark"`` and a valid ``ts`` goes to every partition (explicit
    partition, null key); ``partitions`` is their number, else the broker is asked. ``rate``
    caps events/s; ``original_timing`` sleeps by the ``ts`` (ms) gaps divided by ``speedup``.
    Sends are batched (``linger_ms``), not awaited one by one. ``security``: neutral names.

    ``end_of_stream``: the input is the whole stream. After its last line every partition
    gets the watermark that ends it (``stream.devices.end_watermark`` of the newest event ts,
    with ``settings`` or the environment's): every turn becomes final, exactly as at the end
    of a replay. Without it the turns of the last rephrase window (and of each partition's
    quiet tail) stay pending until later events or a watermark arrive.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError
    from tqdm import tqdm

    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate}")
    if speedup <= 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    total = None
    if isinstance(path_or_lines, str | os.PathLike) and str(path_or_lines) != "-":
        if not Path(path_or_lines).is_file():
            raise KafkaIOError(f"input file {path_or_lines} does not exist")
        total = _count_lines(Path(path_or_lines)) if progress else None
    check_tls(bootstrap, **security)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, client_id="feedback-stream-produce", acks=1,
        linger_ms=linger_ms, max_batch_size=256 * 1024, enable_idempotence=False,
        **security_kwargs(_checked(security), "aiokafka"))
    try:
        await producer.start()
    except KafkaError as exc:
        raise KafkaIOError(f"cannot connect to Kafka at {bootstrap}: {exc!r}") from exc
    stats = ProduceStats()
    failures: list[BaseException] = []

    def on_done(fut: asyncio.Future) -> None:
        # Collected instead of awaited one by one: awaiting each send caps throughput.
        if not fut.cancelled() and fut.exception() is not None:
            failures.append(fut.exception())  # type: ignore[arg-type]

    bar = tqdm(total=total, unit=" ev", disable=not progress, file=sys.stderr,
               desc=f"produce {topic}", mininterval=0.5, dynamic_ncols=True)
    started = time.monotonic()
    try:
        try:
            all_partitions = (list(range(partitions)) if partitions is not None
                              else sorted(await producer.partitions_for(topic)))
        except KafkaError as exc:
            raise KafkaIOError(f"topic {topic!r} is not available on {bootstrap} (create it "
                               f"first, e.g. with the produce command): {exc!r}") from exc
        pacer = _Pacer(rate, speedup if original_timing else None)

        async def send_everywhere(line: bytes) -> None:
            # Each partition's consumer must see a watermark to advance its clock.
            for partition in all_partitions:
                fut = await producer.send(topic, line, key=None, partition=partition)
                fut.add_done_callback(on_done)
            stats.messages += len(all_partitions)

        async def send_line(line: bytes) -> None:
            key, watermark, ts = _inspect(line, key_field)
            await pacer.wait(stats.lines, ts)
            if watermark:
                await send_everywhere(line)
                stats.watermarks += 1
            else:
                if ts is not None and _MIN_TS <= ts <= _MAX_TS and ts == int(ts):
                    stats.newest_ts = max(stats.newest_ts, int(ts))
                fut = await producer.send(topic, line, key=key)
                fut.add_done_callback(on_done)
                stats.messages += 1
                stats.unkeyed += key is None
            stats.lines += 1
            stats.bytes += len(line)

        async with contextlib.aclosing(_line_batches(path_or_lines)) as batches:
            async for batch in batches:
                for line in batch:
                    await send_line(line)
                    if failures:
                        break
                bar.update(len(batch))
                if failures:
                    break
        if end_of_stream and stats.newest_ts and not failures:
            stats.end_watermark = end_watermark(stats.newest_ts, settings or Settings.from_env())
            await send_everywhere(orjson.dumps({"type": "watermark", "ts": stats.end_watermark}))
        await producer.flush()
    finally:
        bar.close()
        await producer.stop()
    stats.seconds = time.monotonic() - started
    if failures:
        raise KafkaIOError(f"{len(failures)} record(s) to {topic!r} failed after {stats.lines} "
                           f"lines; first error: {failures[0]!r}")
    return stats


def produce_file(
    path_or_lines: str | os.PathLike[str] | Iterable[str | bytes],
    bootstrap: str,
    topic: str,
    **kwargs: Any,
) -> ProduceStats:
    """Blocking form of :func:`produce_file_async` (runs its own event loop)."""
    return asyncio.run(produce_file_async(path_or_lines, bootstrap, topic, **kwargs))
