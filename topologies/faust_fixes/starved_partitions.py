"""Input partitions left out of the fetch for good: put them back.

Faust fetches only its "active" partitions: the assignment minus those paused (rebalance,
table recovery) and minus those whose stream buffer filled up (``Consumer.on_buffer_full``).
A partition left out because its buffer was full comes back through a pressure-drop callback
of the buffer's queue (``on_buffer_drop``) once the stream has drained it. Measured on tansu
(tests/test_faults.py SIGKILL test, about 1 run in 4 on a loaded machine, 1 in 14 on a quieter
one): the worker that took over after the kill processed the backlog for a while, then stopped
for good with input waiting (lag ~2,000), agents idle, no error and no warning.

The check (every few seconds, from the worker's gauge timer) puts back an assigned input
partition that is neither active nor paused when Faust's own bookkeeping says nothing holds it
back: not paused, and either not marked buffered or marked buffered while its stream buffer is
below the drop threshold. Each one is logged at WARNING and counted.

Upstream: faust-streaming issue 175 ("Consumers slowly die over time", open) reports the same
symptom; faust-streaming 0.15.3, mode-streaming's ``FlowControlQueue``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)


def starved(assigned: Iterable[Any], active: set[Any], paused: set[Any], buffered: set[Any],
            drained: Callable[[Any], bool], skip: Callable[[Any], bool]) -> list[Any]:
    """Assigned partitions out of the fetch with nothing holding them back.

    >>> starved(["a", "b", "c", "d", "e"], active={"a"}, paused={"b"}, buffered={"c", "d"},
    ...         drained=lambda tp: tp == "c", skip=lambda tp: False)
    ['c', 'e']
    """
    return sorted(tp for tp in assigned
                  if tp not in active and tp not in paused and not skip(tp)
                  and (tp not in buffered or drained(tp)))


def resume_starved(consumer: Any, queue_of: Callable[[Any], Any | None]) -> list[Any]:
    """Put starved partitions of Faust ``consumer`` back into the fetch; ``queue_of(tp)`` is
    the stream buffer that takes ``tp`` (None if unknown: then only an unmarked partition
    counts). Returns the partitions put back."""
    active = consumer._active_partitions
    if active is None:  # Faust has not computed them yet: nothing can be left out
        return []

    def drained(tp: Any) -> bool:
        queue = queue_of(tp)
        return queue is not None and queue.qsize() <= queue.pressure_drop_size

    tps = starved(consumer.assignment(), active, consumer._paused_partitions,
                  consumer._buffered_partitions, drained, consumer._is_changelog_tp)
    for tp in tps:
        log.warning("input %s[%d] was left out of the fetch (not paused, stream buffer "
                    "drained): fetching it again", tp.topic, tp.partition)
        consumer._buffered_partitions.discard(tp)
        active.add(tp)
    return tps


def stream_queue_finder(app: Any) -> Callable[[Any], Any | None]:
    """``queue_of`` for :func:`resume_starved`: the buffer of the agent reading the topic."""
    def queue_of(tp: Any) -> Any | None:
        for agent in app.agents.values():
            for actor in getattr(agent, "_actors", ()):
                channel = actor.stream.channel
                if tp.topic in getattr(channel, "topics", ()):
                    return channel.queue
        return None
    return queue_of
