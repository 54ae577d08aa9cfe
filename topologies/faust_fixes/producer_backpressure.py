"""Faust's changelog back-pressure as metrics instead of a warning per wait.

Cause of the ``producer buffer full size N`` warnings (37-48 per 4k-event run, hundreds on
larger streams): table writes (changelog records) go through Faust's own producer buffer, which
hands them to aiokafka one at a time (until 2026-12-03 each was also a produce request of its
own on the embedded broker: ``recovery_highwaters``). Each batch writes one changelog record
per changed device session, estimate and personal miner, often a few hundred, while Faust's
producer buffer holds 100. Faust's conductor then waits, before it hands the agents more
events, until the buffer has drained to 100 again, and logs a WARNING and an INFO line each
time. That wait is the intended back-pressure (the changelog must keep up, and Faust flushes it
before committing offsets), not a fault.

So the wait stays; what changes is how it is reported: the same wait (Faust's code, without
the two log lines) counted in ``feedback_stream_changelog_backpressure_waits_total`` and
``feedback_stream_changelog_backpressure_seconds_total``.

Since the worker sends its table writes a chunk at a time itself (``changelog_batches``),
none of them goes through that buffer: the wait is kept for anything else that writes a
table through Faust.

Upstream: Faust's ``ProducerBuffer.wait_until_ebb`` logs every wait at WARNING (no
faust-streaming issue filed from here); replaced by the same wait without the log lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

OnWait = Callable[[int, float], None]
"""Called after each wait with the buffer size that caused it and the seconds waited."""

_on_wait: OnWait = lambda size, seconds: None  # noqa: E731 - replaced on install


async def _wait_until_ebb(self: Any) -> None:
    # faust.transport.producer.ProducerBuffer.wait_until_ebb, minus its two log lines.
    if self.size > self.max_messages:
        size, started = self.size, time.monotonic()
        await self.flush_atmost(self.max_messages)
        _on_wait(size, time.monotonic() - started)


def install_backpressure_metrics(on_wait: OnWait) -> None:
    """Report Faust's producer-buffer waits to ``on_wait`` instead of the log. Call before
    the app starts (Faust's conductor keeps a reference to the method)."""
    global _on_wait
    from faust.transport.producer import ProducerBuffer

    _on_wait = on_wait
    ProducerBuffer.wait_until_ebb = _wait_until_ebb  # type: ignore[method-assign]
