"""Remembering which events were seen, beyond each device's recent ids: a rotating Bloom filter.

Exact per-device ids recognise a re-delivered event within the allowed lateness; an older
one (or one of a device whose session state expired) would otherwise be dead-lettered as
``late`` or, worse, counted again. ``SeenFilter`` remembers every admitted event's
(device id, event id) in ``generations`` Bloom filters of ``capacity`` items each: when the
newest is full a fresh one starts and the oldest is dropped, so memory is fixed and the
horizon is the last (generations - 1) * capacity to generations * capacity items.

A lookup is a false positive with probability at most ``fp_rate`` (each generation is sized
for ``fp_rate / generations`` at ``capacity`` items: the union bound over the generations);
there are no false negatives within the horizon. Deterministic (blake2b, no salted
``hash()``), pure Python.

Adding costs one list append: the new fingerprints' bits are set in batches with numpy (up to
``_BATCH`` at a time, and before any lookup or ``bits()``), not 15 Python-level probes each.

Persistence: the filter's bits are a function of the fingerprints added to each generation,
so it is saved as rows of 8-byte fingerprints, one row per save per generation
(``take_rows``), and rebuilt exactly from them (``load_rows``): a save costs 8 bytes per new
item instead of a whole bit array.

>>> f = SeenFilter(capacity=1_000, generations=3, fp_rate=0.001)
>>> f.add(fingerprint("dev1", "e1"))
>>> fingerprint("dev1", "e1") in f, fingerprint("dev1", "e2") in f
(True, False)
>>> g = SeenFilter(capacity=1_000, generations=3, fp_rate=0.001)
>>> g.load_rows(f.take_rows()[0])
>>> fingerprint("dev1", "e1") in g, g.bits() == f.bits()
(True, True)
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable

import numpy as np

_BATCH = 4_096
"""Fingerprints whose bits wait to be set, at most (one numpy pass per batch)."""


def fingerprint(device_id: str, event_id: str) -> int:
    """64-bit fingerprint of an event; distinct events collide with probability 2**-64."""
    data = f"{device_id}\x00{event_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class _Generation:
    __slots__ = ("number", "bits", "count", "unsaved", "rows", "unset")

    def __init__(self, number: int, n_bits: int) -> None:
        self.number = number
        self.bits = bytearray((n_bits + 7) // 8)
        self.count = 0
        self.unsaved: list[int] = []
        """Fingerprints added since the last ``take_rows``."""
        self.rows = 0
        """Rows saved so far (row numbers 0 .. rows - 1)."""
        self.unset: list[int] = []
        """Fingerprints counted in ``count`` whose bits are not set yet (``_set_bits``)."""


class SeenFilter:
    """Rotating Bloom filter of event fingerprints (see the module docstring)."""

    def __init__(self, capacity: int = 100_000, generations: int = 4,
                 fp_rate: float = 1e-4) -> None:
        if capacity < 1 or generations < 2 or not 0 < fp_rate < 1:
            raise ValueError("need capacity >= 1, generations >= 2, 0 < fp_rate < 1")
        self.capacity, self.generations, self.fp_rate = capacity, generations, fp_rate
        per_generation = fp_rate / generations
        self.n_bits = max(8, math.ceil(-capacity * math.log(per_generation) / math.log(2) ** 2))
        self.n_hashes = max(1, round(self.n_bits / capacity * math.log(2)))
        self.live: list[_Generation] = [_Generation(0, self.n_bits)]
        """Oldest first; the last one takes new items."""
        self.dropped: list[tuple[int, int]] = []
        """(generation number, rows saved) of generations dropped since the last save."""
        self._unset = 0
        """Fingerprints waiting in the live generations' ``unset`` lists."""

    def _probes(self, fp: int) -> list[int]:
        # Double hashing (Kirsch-Mitzenmacher) on the fingerprint's halves: small ints are
        # several times faster in Python than 64-bit products; the odd step visits distinct
        # bits.
        # (start + i * step) % n for i < n_hashes, the products taken by range's stepping.
        start, step, n = fp & 0xFFFFFFFF, (fp >> 32) | 1, self.n_bits
        return [x % n for x in range(start, start + self.n_hashes * step, step)]

    def _set_bits(self, gen: _Generation, fps: list[int]) -> None:
        """Set the bits of ``fps`` in ``gen``: ``_probes`` of each, vectorised (the same
        integers: every ``start + i * step`` is below 2**36, exact in int64)."""
        fp = np.array(fps, dtype=np.uint64)
        start = (fp & np.uint64(0xFFFFFFFF)).astype(np.int64)
        step = ((fp >> np.uint64(32)) | np.uint64(1)).astype(np.int64)
        probes = (start[:, None] + np.arange(self.n_hashes, dtype=np.int64) * step[:, None]
                  ) % self.n_bits
        bits = np.frombuffer(gen.bits, dtype=np.uint8)  # a writable view of the bytearray
        np.bitwise_or.at(bits, probes >> 3, (1 << (probes & 7)).astype(np.uint8))

    def _settle(self) -> None:
        """Set the bits of every fingerprint added so far (before the bits are read)."""
        for gen in self.live:
            if gen.unset:
                self._set_bits(gen, gen.unset)
                gen.unset = []
        self._unset = 0

    def __contains__(self, fp: int) -> bool:
        if self._unset:
            self._settle()
        probes = self._probes(fp)
        for gen in self.live:
            bits = gen.bits
            for bit in probes:
                if not bits[bit >> 3] & (1 << (bit & 7)):
                    break
            else:
                return True
        return False

    def add(self, fp: int) -> None:
        """Remember ``fp`` (callers add each item once: check ``in`` first)."""
        gen = self.live[-1]
        if gen.count >= self.capacity:
            gen = _Generation(gen.number + 1, self.n_bits)
            self.live.append(gen)
            if len(self.live) > self.generations:
                old = self.live.pop(0)
                self.dropped.append((old.number, old.rows))
                self._unset -= len(old.unset)  # its bits will never be read
        gen.unset.append(fp)
        gen.count += 1
        gen.unsaved.append(fp)
        self._unset += 1
        if self._unset >= _BATCH:
            self._settle()

    # -- persistence -----------------------------------------------------------------------------
    def take_rows(self) -> tuple[list[tuple[int, int, bytes]], list[tuple[int, int]]]:
        """What to save since the last call: new rows (generation, row number, packed
        fingerprints) and the generations dropped meanwhile (generation, rows saved)."""
        rows = []
        for gen in self.live:
            if gen.unsaved:
                rows.append((gen.number, gen.rows,
                             struct.pack(f"<{len(gen.unsaved)}Q", *gen.unsaved)))
                gen.rows += 1
                gen.unsaved = []
        dropped, self.dropped = self.dropped, []
        return rows, dropped

    def load_rows(self, rows: Iterable[tuple[int, int, bytes]]) -> None:
        """Rebuild from saved rows (replacing the current content). Rows of generations
        older than the newest ``generations`` (a crash before their deletion) are ignored and
        reported as dropped by the next ``take_rows``."""
        by_gen: dict[int, list[tuple[int, bytes]]] = {}
        for number, row, blob in rows:
            by_gen.setdefault(number, []).append((row, blob))
        numbers = sorted(by_gen)[-self.generations:] or [0]
        self.live = []
        self.dropped = [(number, max(row for row, _ in by_gen[number]) + 1)
                        for number in sorted(by_gen)[:-self.generations]]
        for number in numbers:
            gen = _Generation(number, self.n_bits)
            for row, blob in sorted(by_gen.get(number, [])):
                fps = [fp for (fp,) in struct.iter_unpack("<Q", blob)]
                if fps:
                    self._set_bits(gen, fps)
                gen.count += len(fps)
                gen.rows = max(gen.rows, row + 1)
            self.live.append(gen)
        self._unset = 0

    # -- introspection ---------------------------------------------------------------------------
    def bits(self) -> list[bytes]:
        self._settle()
        return [bytes(gen.bits) for gen in self.live]

    def size_bytes(self) -> int:
        """Memory of the bit arrays (at most ``generations`` of them)."""
        return sum(len(gen.bits) for gen in self.live)

    def items(self) -> int:
        return sum(gen.count for gen in self.live)

