"""Faust's producer flush returns before the table writes are sent: the input offsets were
committed ahead of the state they had changed.

Faust (faust-streaming 0.15.3) commits input offsets in ``Consumer._commit_offsets`` right
after ``await app.producer.flush()``, meant to send every buffered changelog record first.
But ``ProducerBuffer.flush`` waits for each message with a 0.1 s timeout and *returns* on the
first timeout, buffer not empty; and the message its background task has taken from the queue
(waiting for aiokafka to accept it) is not counted at all. Table writes on the embedded broker
went out one record per request then (``recovery_highwaters``), so under CPU load a send took
longer than 0.1 s and the flush gave up early. Measured on tansu (SIGKILL test, worker on the chunk
transport, load 4-6): in 2 of 6 runs the worker that took over found the changelogs of input
partitions empty (recovery highwater -1) whose input offsets had been committed: it
continued without those devices' histories, and 13 rephrases and 39 defects were never
emitted.

Here ``flush`` waits until the queue is empty and no message is between the queue and
aiokafka, however long that takes (aiokafka's own flush then waits for the batches); it stops
waiting only when the buffer's service stops (Faust then raises, as before).

The worker installs it (``topologies.app``). With it, the worker's first offset commit can wait
out an embedded-broker restart; the offset guard's membership check (``broker_offsets``) keeps
that commit off the new broker. The restart test of tests/test_faust_fixes.py runs an app with
it; the worker's SIGKILL, rebalance and broker-restart tests run with it.

Upstream: no faust-streaming issue filed from here; ``ProducerBuffer.flush`` replaced,
``ProducerBuffer._send_pending`` wrapped to count the message in transit.
"""

from __future__ import annotations

import asyncio
from typing import Any

_MARKER = "_feedback_stream_full_flush"
_IN_TRANSIT = "_feedback_stream_in_transit"


def in_transit(buffer: Any) -> int:
    """Messages taken from ``buffer``'s queue and not yet handed to aiokafka."""
    return int(buffer.__dict__.get(_IN_TRANSIT, 0))


async def _flush(self: Any) -> None:
    # faust.transport.producer.ProducerBuffer.flush without the early return.
    while self.size or in_transit(self):
        if self.state != "running":
            raise RuntimeError("Cannot flush: Producer not Running")  # Faust's error
        self.message_sent.clear()
        try:
            await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)
        except TimeoutError:
            continue  # slow, not done: look again


def install_full_producer_flush() -> None:
    """Make Faust's ``ProducerBuffer.flush`` wait for every buffered message (idempotent)."""
    from faust.transport.producer import ProducerBuffer

    cls: Any = ProducerBuffer
    if getattr(cls, _MARKER, None) is not None:
        return
    send = cls._send_pending

    async def _send_pending(self: Any, fut: Any) -> None:
        self.__dict__[_IN_TRANSIT] = in_transit(self) + 1
        try:
            await send(self, fut)
        finally:
            self.__dict__[_IN_TRANSIT] -= 1

    setattr(cls, _MARKER, (cls.flush, send))
    cls.flush = _flush
    cls._send_pending = _send_pending


def uninstall_full_producer_flush() -> None:
    """Faust's own flush again (tests)."""
    from faust.transport.producer import ProducerBuffer

    cls: Any = ProducerBuffer
    original = getattr(cls, _MARKER, None)
    if original is not None:
        cls.flush, cls._send_pending = original
        delattr(cls, _MARKER)
