"""Types shared by the topology's parts: the message a batch processor reads and the
``BatchProcessor`` protocol every stage's processor follows (``topologies.app._run`` drives
any of them the same way)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol

from stream.records import Output


class Message(NamedTuple):
    """One input record as Faust delivered it (raw bytes; decoding is the processor's job)."""

    key: bytes | None
    value: bytes
    partition: int
    offset: int
    topic: str = ""


class BatchProcessor(Protocol):
    """One stage over batches of messages, its state in memory and in a changelog table.

    ``process`` returns the batch's outputs and keeps state changes in memory; ``commit``
    writes them to the table once the outputs were acknowledged (a crash in between makes
    the batch run again: at-least-once); ``reset`` forgets memory after a rebalance (the
    table is read back lazily); ``state_sizes`` feeds the gauges.
    """

    def process(self, batch: Iterable[Message]) -> list[Output]: ...

    def commit(self) -> None: ...

    def reset(self) -> None: ...

    def state_sizes(self) -> dict[str, int]: ...


class ChainLearner(Protocol):
    """What stage 1 hands its outputs to in the same batch (the personal rewrite layer)."""

    def learn(self, outputs: list[Output]) -> list[Output]: ...

    def commit(self) -> None: ...

    def reset(self) -> None: ...
