"""Merged internal records: one ``rate-updates`` record per key and one ``rephrase-chains``
record per stage-1 batch, and their expansion on the consuming side."""

from __future__ import annotations

from typing import Any

from stream.records import CHAINS, RATE_UPDATES, Output

MAX_MERGED = 1_000
"""Items per merged record: keeps a record far below Kafka's 1 MiB default message size
(~100-200 bytes per item) whatever the batch size."""


def coalesce(outputs: list[Output]) -> list[Output]:
    """A batch's internal records, merged: one ``rate-updates`` record per key instead of one
    per finalised turn (``updates`` holds the turns' updates in order), and one
    ``rephrase-chains`` record (``chains``, in order) instead of one per chain, each with at
    most ``MAX_MERGED`` items. Most of a batch's updates go to a few busy keys (intents,
    domains, device types, popular utterances), nearly every turn ends a chain, and every
    record costs a produce, a fetch and a trip through Faust's per-message machinery."""
    rest: list[Output] = []
    full: list[Output] = []
    merged: dict[str, Output] = {}
    for out in outputs:
        if out.stream == CHAINS:
            key, field, item = CHAINS, "chains", out.record
            header: dict[str, Any] = {}
        elif out.stream == RATE_UPDATES:
            key, field, item = out.key, "updates", dict(out.record)
            header = {"key_type": item.pop("key_type"), "key": item.pop("key")}
        else:
            rest.append(out)
            continue
        group = merged.get(key)
        if group is None or len(group.record[field]) >= MAX_MERGED:
            if group is not None:
                full.append(group)  # published before the key's next group: order kept
            group = merged[key] = Output(out.stream, key, {**header, field: []})
        group.record[field].append(item)
    return rest + full + list(merged.values())


def expand_chains(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The chains of a (possibly merged) ``rephrase-chains`` record."""
    chains = record.get("chains")
    return [record] if chains is None else chains


def expand_rate_updates(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The single updates of a (possibly coalesced) ``rate-updates`` record."""
    updates = record.get("updates")
    if updates is None:
        return [record]
    key_type, key = record["key_type"], record["key"]
    return [{"key_type": key_type, "key": key, **update} for update in updates]
