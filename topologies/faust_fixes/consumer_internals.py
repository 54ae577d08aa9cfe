"""Faust's consumer keeps per-partition positions only in private attributes.

Upstream: Faust 0.15.3 has no public accessor for a partition's committed or read offset (no
faust-streaming issue filed from here). Every read of those attributes goes through this module,
so a Faust upgrade that renames them breaks here, in one place, under
``tests/test_faust_fixes.py`` and the broker tests.
"""

from __future__ import annotations

from typing import Any


def committed_offsets(consumer: Any) -> dict[Any, int | None]:
    """TopicPartition -> offset this consumer last committed (forgotten on revoke)."""
    return consumer._committed_offset


def read_offset(consumer: Any, tp: Any) -> int | None:
    """Offset of the last record of ``tp`` handed to the streams (None: none yet)."""
    return consumer._read_offset.get(tp)


def flow_state(consumer: Any) -> str:
    """What decides whether each assigned partition is fetched: Faust's active, paused
    (rebalance, recovery) and buffered (stream buffer full) sets, aiokafka's own pauses and
    the read offsets (for the worker's task dump)."""
    def names(tps: Any) -> str:
        return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps or ())) or "-"

    lines = [f"assigned: {names(consumer.assignment())}",
             f"active: {names(consumer._active_partitions)}",
             f"paused: {names(consumer._paused_partitions)}",
             f"buffered (stream buffer full): {names(consumer._buffered_partitions)}",
             f"read offsets: {sorted((str(tp), o) for tp, o in consumer._read_offset.items())}"]
    aio = getattr(getattr(consumer, "_thread", None), "_consumer", None)
    if aio is not None:
        lines.append(f"aiokafka paused: {names(aio.paused())}")
        assignment = aio._subscription.subscription.assignment
        positions = []
        for tp in sorted(consumer.assignment()):
            state = assignment.state_value(tp) if assignment is not None else None
            if state is not None and state.has_valid_position:
                positions.append(f"{tp.topic}[{tp.partition}]={state.position}")
        lines.append(f"aiokafka positions: {', '.join(positions) or '-'}")
        held = names(aio._fetcher._records)
        lines.append(f"aiokafka fetched, not yet returned: {held}")
    return "\n".join(lines)


def stream_queues(app: Any) -> str:
    """Each agent actor's stream buffer: size, maximum and pending pressure-drop callbacks
    (a partition stays out of the fetch while its callback waits)."""
    lines = []
    for name, agent in app.agents.items():
        for actor in getattr(agent, "_actors", ()):
            queue = actor.stream.channel.queue
            lines.append(f"{name}: {queue.qsize()} of {queue.maxsize}, "
                         f"{len(queue._pending_pressure_drop_callbacks)} drop callbacks waiting")
    return "\n".join(lines)
