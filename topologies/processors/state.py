"""Table state shared by the processors: partitioning, raw-key tables, row codecs and the
replay-safety check (``first_application``)."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from functools import lru_cache
from typing import Any

import orjson
from kafka.partitioner.default import murmur2


@lru_cache(maxsize=65_536)
def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives ``key``: Faust, aiokafka and
    kafka-python all agree, which is what keeps tables co-partitioned with their input.
    Cached: a restore hashes every table key once per input partition (kafka-python's murmur2
    is pure Python, ~2/3 of a restart's CPU in the kill tests)."""
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions


SALT_SEPARATOR = "\x00"
"""Between a key and its salt (ids cannot hold control characters)."""


@lru_cache(maxsize=65_536)
def co_partitioned(key: str, partition: int, partitions: int) -> str:
    """``key`` itself if the default partitioner puts it in ``partition``, else ``key`` with
    the first salt that does: the table key of state that belongs to input ``partition``.

    A device's state must sit in the changelog partition of its input partition (that is what
    a worker restores when it gets the partition). The input key is the raw device id; the
    state's id is a pseudonym when ``FEEDBACK_STREAM_DEVICE_ID_KEY`` is set (and may differ from
    the key whenever a producer keys by something else), so it is salted into place.

    >>> [partition_of(co_partitioned(k, 3, 4), 4) for k in ("a", "b", "c")]
    [3, 3, 3]
    >>> co_partitioned("dev1", partition_of("dev1", 4), 4)
    'dev1'
    """
    salt = 0
    salted = key
    while partition_of(salted, partitions) != partition:
        salted = f"{key}{SALT_SEPARATOR}{salt}"
        salt += 1
    return salted



def decode(blob: bytes | str) -> dict[str, Any]:
    """A table value (the JSON bytes written, as written or restored from the changelog)."""
    return orjson.loads(blob)


class RawKeyTable(MutableMapping[str, bytes]):
    """A str-keyed view of a table whose keys and values are raw bytes (a Faust ``Table`` with
    ``key_type=bytes, value_type=bytes``).

    Raw keys are what keep a table co-partitioned with its input: the changelog record's key
    is exactly the input record's key, so the default partitioner puts both in the same
    partition, and the worker that owns an input partition restores exactly the state of its
    keys. (A str key type makes Faust JSON-encode keys: ``"dev1"`` with quotes hashes to
    another partition, and a worker that takes over half the partitions restores the wrong
    half of the state.)

    >>> data = {}
    >>> table = RawKeyTable(data)
    >>> table["dev1"] = b"{}"
    >>> data, table.get("dev1"), list(table.items())
    ({b'dev1': b'{}'}, b'{}', [('dev1', b'{}')])
    >>> table.pop("dev1"), table.pop("dev1", None), len(table)
    (b'{}', None, 0)
    """

    def __init__(self, table: MutableMapping[bytes, bytes]) -> None:
        self.table = table

    def __getitem__(self, key: str) -> bytes:
        return self.table[key.encode()]

    def get(self, key: str, default: Any = None) -> Any:
        return self.table.get(key.encode(), default)

    def __setitem__(self, key: str, value: bytes) -> None:
        self.table[key.encode()] = value

    def __delitem__(self, key: str) -> None:
        del self.table[key.encode()]

    def __iter__(self) -> Iterator[str]:
        return (key.decode() for key in self.table)

    def __len__(self) -> int:
        return len(self.table)


def first_application(applied: dict[str, list[Any]], record: dict[str, Any],
                      fallback_offset: int | None) -> bool:
    """True (and remembered in ``applied``) unless ``record`` was applied before.

    Stage 1 stamps what it emits with ``src`` = [input partition, input offset] of the message
    it was processing; it emits in input order, and after a crash re-processing from the
    restored state emits the same records with the same ``src`` (the stream watermark is
    restored too). So per source partition it is enough to keep the last offset applied and
    the event ids applied at that offset. Records without ``src`` fall back to their own
    offset (``fallback_offset``) in the topic they were read from, or are always applied
    (``None``).

    >>> applied = {}
    >>> [first_application(applied, r, 0) for r in (
    ...     {"src": [0, 5], "event_id": "a"}, {"src": [0, 5], "event_id": "b"},
    ...     {"src": [0, 5], "event_id": "a"}, {"src": [0, 4], "event_id": "z"},
    ...     {"src": [1, 2], "event_id": "a"}, {"src": [0, 6], "event_id": "a"})]
    [True, True, False, False, True, True]
    """
    src = record.get("src")
    item = record.get("event_id") or record["event_ids"][-1]
    if src:
        part, offset = str(src[0]), src[1]
    elif fallback_offset is None:
        return True
    else:
        part, offset = "topic", fallback_offset
    last = applied.get(part)
    if last is not None:
        if offset < last[0] or (offset == last[0] and item in last[1]):
            return False
        if offset == last[0]:
            last[1].append(item)
            return True
    applied[part] = [offset, [item]]
    return True


def read_miner_row(blob: bytes | None) -> tuple[dict[str, Any] | None, dict[str, list[Any]]]:
    """(miner snapshot, applied source positions) of a rewrite-miner row; (None, {}) without
    one."""
    if blob is None:
        return None, {}
    data = decode(blob)
    return data["m"], data["s"]


def miner_row(snapshot: dict[str, Any], applied: dict[str, list[Any]]) -> bytes:
    """A rewrite-miner row: the miner's snapshot (``to_dict(False)``: the settings hold its
    config) and the source positions of the chains it learned."""
    return orjson.dumps({"m": snapshot, "s": applied})
