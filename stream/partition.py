"""Kafka's default partitioner (murmur2 of the key), in the core without a Kafka client.

State that is learned per input partition (``stream.pairs``) must see, in the in-process replay,
exactly the devices a worker's partition sees: the replay computes each device's partition the
way producers key the input topic (by ``device_id``).

>>> partition_of("dev00001", 4), partition_of(b"dev00001", 4)
(0, 0)
"""

from __future__ import annotations

import struct
from functools import lru_cache

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
# One compiled reader per block count of the usual keys (ids, table keys): the 4-byte
# little-endian blocks come out in one C call instead of a slice and int.from_bytes each.
_BLOCKS = [struct.Struct(f"<{n}I") for n in range(64)]


def _blocks(count: int) -> struct.Struct:
    return _BLOCKS[count] if count < len(_BLOCKS) else struct.Struct(f"<{count}I")


def murmur2(data: bytes) -> int:
    """MurmurHash2 as Kafka's Java client computes it (``Utils.murmur2``), unsigned 32 bits.

    >>> murmur2(b"abc")  # Kafka's own test value (UtilsTest.testMurmur2)
    479470107
    """
    length = len(data)
    h = 0x9747B28C ^ length
    count = length >> 2
    if count:
        for k in _blocks(count).unpack_from(data):
            k = k * _M & _MASK
            # (h * m) ^ (k * m), masked once: the mask distributes over the xor.
            h = (h * _M ^ (k ^ k >> 24) * _M) & _MASK
    if length & 3:
        # The tail bytes xored in at shifts 0, 8, 16 are the little-endian value of the tail.
        h = (h ^ int.from_bytes(data[count << 2:], "little")) * _M & _MASK
    h ^= h >> 13
    h = h * _M & _MASK
    return h ^ h >> 15


@lru_cache(maxsize=1 << 16)
def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``."""
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions
