"""The core's copy of Kafka's default partitioner gives exactly Kafka's partitions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.partition import murmur2, partition_of
from tests.scale import scaled

# Kafka's Java client test values (UtilsTest.testMurmur2), signed as Java returns them.
JAVA = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829, b"abc": 479470107,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}

# What the byte-at-a-time implementation gave before the block reader: every tail length,
# keys longer than the precompiled readers, the table keys' control characters, high bytes.
BEFORE = {b"": 275646681, b"a": 2731586172, b"ab": 316155434, b"abcd": 2971317748,
          b"abcde": 461995741, b"dev00001": 1474580748,
          "caf\u00e9 \u2615".encode(): 2800836685, b"\x00seen:3:1:17\x1e\x002": 2524639722,
          b"\xff" * 13: 2293708750, bytes(range(64)): 2966931153,
          bytes(range(256)) * 2: 2540927009}


def test_murmur2_is_kafkas_java_murmur2():
    for key, signed in JAVA.items():
        assert murmur2(key) == signed % (1 << 32), key
    for key, value in BEFORE.items():
        assert murmur2(key) == value, key


@settings(max_examples=scaled(300, 40), deadline=None, database=None)
@given(st.binary(max_size=300))
def test_murmur2_equals_kafka_pythons(key: bytes) -> None:
    from kafka.partitioner.default import murmur2 as reference

    assert murmur2(key) == reference(key)


def test_partitions():
    # Before the block reader; str and bytes keys alike.
    for key, want in {"dev00001": [0, 0, 0, 0], "dev00002": [0, 1, 2, 10],
                      "\x00wm:2": [0, 2, 2, 2], "a\x000": [0, 2, 3, 11]}.items():
        assert [partition_of(key, n) for n in (1, 3, 4, 12)] == want, key
        assert [partition_of(key.encode(), n) for n in (1, 3, 4, 12)] == want, key
