"""A batch's stage-1 state writes land as a whole or not at all: an undo log in the table.

A worker killed while its state writes are on their way to the changelog leaves a prefix of
them. Stage 1's state is coupled across devices (the pair evidence counts observations that
wait on device states, and decides links of other devices from them), so a restart from
*some* new rows and some old ones re-runs the batch from a state it never had: observations
were lost or counted twice, and the model learned a different sequence. So before a batch's
rows, the processor writes their values as of the last commit (*pre-images*, absent ones
included) under ``undo`` keys of the partition, tagged with the input offset the batch
commits; the partition's watermark entry, which holds that offset, is written last and is the
commit point. A restored partition whose undo entries carry an offset past its watermark
entry's was killed in between: it puts the pre-images back (in the table too, so a later
commit point cannot adopt the torn rows) and drops those entries, and the batch runs again
from exactly the state it ran from the first time.

Cost: the pre-images double the bytes a commit writes; the table holds them for the last
commit only (the next one overwrites the entries).

>>> rows = [("dev1", b'{"a":1}'), ("\\x00evidence:pairs:x", None)]
>>> decode(encode(42, rows)) == (42, rows)
True
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, MutableMapping

from topologies.processors.state import co_partitioned

UNDO_PREFIX = "\x00undo:"
"""Table keys of each input partition's undo entries."""
ENTRY_BYTES = 512 * 1024
"""Pre-images per entry, at most (about: one large row makes its own entry), well below
Kafka's default message size limit."""
_HEAD, _ROW = struct.Struct(">q"), struct.Struct(">Ii")


def undo_key(partition: int, index: int, partitions: int) -> str:
    return co_partitioned(f"{UNDO_PREFIX}{partition}:{index}\x1e", partition, partitions)


def encode(version: int, rows: list[tuple[str, bytes | None]]) -> bytes:
    """Binary, not JSON: rows are JSON and raw seen-filter bytes, copied as they are."""
    parts = [_HEAD.pack(version)]
    for key, value in rows:
        raw = key.encode()
        parts += (_ROW.pack(len(raw), -1 if value is None else len(value)), raw, value or b"")
    return b"".join(parts)


def decode(blob: bytes) -> tuple[int, list[tuple[str, bytes | None]]]:
    (version,) = _HEAD.unpack_from(blob)
    at, rows = _HEAD.size, []
    while at < len(blob):
        key_len, value_len = _ROW.unpack_from(blob, at)
        at += _ROW.size
        key = blob[at:at + key_len].decode()
        at += key_len
        value = None if value_len < 0 else bytes(blob[at:at + value_len])
        at += max(value_len, 0)
        rows.append((key, value))
    return version, rows


class UndoLog:
    """The undo entries of one input partition (in the table each method is given)."""

    def __init__(self, partition: int, partitions: int) -> None:
        self.partition, self.partitions = partition, partitions
        self.entries = 0
        """Entries in the table (indexes 0 .. entries - 1), this commit's and older ones."""
        self.written = 0
        """Entries the last ``write`` wrote."""

    def _key(self, index: int) -> str:
        return undo_key(self.partition, index, self.partitions)

    def write(self, table: MutableMapping[str, bytes], version: int,
              keys: Mapping[str, object]) -> None:
        """Before the rows ``keys`` are written: their current values, tagged ``version``
        (the input offset the commit point will hold)."""
        entries: list[list[tuple[str, bytes | None]]] = [[]]
        size = 0
        for key in keys:
            value = table.get(key)
            if size >= ENTRY_BYTES:
                entries.append([])
                size = 0
            entries[-1].append((key, value))
            size += len(key) + (len(value) if value else 0)
        for index, rows in enumerate(entries):
            table[self._key(index)] = encode(version, rows)
        self.written = len(entries)
        self.entries = max(self.entries, self.written)

    def tidy(self, table: MutableMapping[str, bytes]) -> None:
        """After the commit point: older entries beyond this commit's go (unused either way:
        their offsets are at or below the commit point)."""
        for index in range(self.written, self.entries):
            table.pop(self._key(index), None)
        self.entries = self.written

    def recover(self, table: MutableMapping[str, bytes], rows: dict[str, bytes],
                committed: int) -> None:
        """Take the undo entries out of ``rows`` (the partition's table rows) and, if they
        belong to a commit past the commit point ``committed`` (the watermark entry's offset,
        -1 without one), put the pre-images back, in ``rows`` and in the table."""
        entries = {key: decode(blob) for key, blob in rows.items()
                   if key.startswith(UNDO_PREFIX)}
        for key in entries:
            del rows[key]
        torn = sorted(key for key, (version, _) in entries.items() if version > committed)
        for key in torn:
            for row_key, value in entries[key][1]:
                if value is None:
                    rows.pop(row_key, None)
                    table.pop(row_key, None)
                else:
                    rows[row_key] = table[row_key] = value
        for key in torn:  # last: killed before this, the next restore does it all again
            table.pop(key, None)
        self.entries = len(entries)  # an upper bound: tidy pops what is gone already
