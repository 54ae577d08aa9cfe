"""Kafka's default partitioner (murmur2 of the key), in the core without a Kafka client.

State that is learned per input partition (``stream.pairs``) must see, in the in-process replay,
exactly the devices a worker's partition sees: the replay computes each device's partition the
way producers key the input topic (by ``device_id``).

>>> partition_of("dev00001", 4), partition_of(b"dev00001", 4)
(0, 0)
"""

from __future__ import annotations

from functools import lru_cache

_M = 0x5BD1E995


def murmur2(data: bytes) -> int:
    """MurmurHash2 as Kafka's Java client computes it (``Utils.murmur2``), unsigned 32 bits."""
    length = len(data)
    h = 0x9747B28C ^ length
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
    tail = length % 4
    base = length - tail
    if tail >= 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 15
    return h


@lru_cache(maxsize=1 << 16)
def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``."""
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions
