"""Kafka plumbing outside Faust: topic creation, fast JSONL replay, whole-topic reads, security.

Security options use one neutral vocabulary everywhere (the ``Settings`` field names):
``security_protocol``, ``sasl_mechanism``, ``sasl_username``, ``sasl_password``, ``ssl_cafile``.
:func:`security_kwargs` maps them to each client library's own arguments.

Broker quirk designed around (see the project's broker notes): tansu answers "latest offset"
requests wrongly, so :func:`read_topic` stops by record count or idle time, never by end offsets.

The security helpers live in :mod:`topologies.kafka_security` and the JSONL replay in
:mod:`topologies.kafka_produce`; both are re-exported here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from topologies.kafka_produce import (
    ProduceStats,
    produce_file,
    produce_file_async,
)
from topologies.kafka_security import (
    SECURITY_FIELDS,
    KafkaIOError,
    _checked,
    check_tls,
    security_kwargs,
    security_options,
)

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36

# Security helpers and the JSONL replay live in their own modules; they are re-exported here.
__all__ = [
    "SECURITY_FIELDS", "KafkaIOError", "ProduceStats", "TopicRecord", "check_reachable",
    "check_tls", "create_topics",
    "produce_file", "produce_file_async", "read_topic", "read_topic_async", "security_kwargs",
    "security_options",
]


# --------------------------------------------------------------------------------------------
# reachability
# --------------------------------------------------------------------------------------------
def check_reachable(bootstrap: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`KafkaIOError` with a one-line reason unless some bootstrap server accepts
    a TCP connection within ``timeout_s``.

    Why: the client libraries retry an unreachable server for their whole request timeout
    (``produce`` waited 31 s) and then report "Unable to bootstrap" or a traceback. A server
    that accepts connections is left to the clients (it may still be starting)."""
    servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
    if not servers:
        raise KafkaIOError("no bootstrap servers given")
    reasons = []
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return
        except ValueError:
            reasons.append(f"{server}: not HOST:PORT")
        except OSError as exc:
            reasons.append(f"{server}: {exc.strerror or exc or exc.__class__.__name__}")
    raise KafkaIOError(f"cannot reach Kafka ({'; '.join(reasons)})")


# --------------------------------------------------------------------------------------------
# topics
# --------------------------------------------------------------------------------------------
def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    compacted: Iterable[str] = frozenset(),
    *,
    timeout_s: float = 30.0,
    **security: str,
) -> dict[str, int]:
    """Create topics (name -> partitions); existing ones are fine. Returns actual partition counts.

    Waits until the broker's metadata lists every topic with a leader for each partition. An
    existing topic keeps its partition count (a mismatch is logged, not fixed: this broker
    cannot add partitions).
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    compacted = set(compacted)
    if compacted - set(topics):
        raise ValueError(f"compacted topics {sorted(compacted - set(topics))} are not in topics")
    spec = {
        name: {"num_partitions": int(n), "replication_factor": 1,
               "configs": {"cleanup.policy": "compact"} if name in compacted else {}}
        for name, n in topics.items()
    }
    check_tls(bootstrap, **security)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="feedback-stream-admin",
                                 request_timeout_ms=int(timeout_s * 1000),
                                 **security_kwargs(_checked(security), "kafka-python"))
    except KafkaError as exc:
        raise KafkaIOError(f"cannot connect to Kafka at {bootstrap}: {exc!r}") from exc
    try:
        result = admin.create_topics(spec, timeout_ms=int(timeout_s * 1000), raise_errors=False)
        for entry in result.get("topics", []):
            code = entry.get("error_code", 0)
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise KafkaIOError(f"creating topic {entry.get('name')!r} failed: error {code} "
                                   f"{entry.get('error_message') or ''}".rstrip())
        admin.wait_for_topics(list(topics), timeout_ms=int(timeout_s * 1000))
        actual = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(topics))}
    except KafkaError as exc:
        raise KafkaIOError(f"creating topics {sorted(topics)} on {bootstrap} failed: "
                           f"{exc!r}") from exc
    finally:
        admin.close()
    for name, wanted in topics.items():
        if actual.get(name) != wanted:
            log.warning("topic %s exists with %s partitions, not %s", name, actual.get(name),
                        wanted)
    return actual


# --------------------------------------------------------------------------------------------
# read a whole topic
# --------------------------------------------------------------------------------------------
class TopicRecord(NamedTuple):
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


async def read_topic_async(
    bootstrap: str,
    topic: str,
    *,
    timeout_s: float = 5.0,
    expected: int | None = None,
    max_s: float | None = None,
    **security: str,
) -> list[TopicRecord]:
    """Every record of ``topic`` from the beginning, without a consumer group.

    Stops when ``expected`` records were read, nothing new arrived for ``timeout_s`` (end
    offsets from this broker are wrong, so they are not used), or after ``max_s`` seconds of
    reading (a snapshot of a topic that is being written all the time). Records of one
    partition are in offset order.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    check_tls(bootstrap, **security)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_wait_ms=100,
        **security_kwargs(_checked(security), "aiokafka"))
    await consumer.start()
    records: list[TopicRecord] = []
    try:
        if topic not in await consumer.topics():
            raise KafkaIOError(f"topic {topic!r} does not exist on {bootstrap}")
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        last_new = started = time.monotonic()
        while expected is None or len(records) < expected:
            if max_s is not None and time.monotonic() - started >= max_s:
                break
            batches = await consumer.getmany(timeout_ms=100)
            got = 0
            for tp, messages in batches.items():
                records.extend(TopicRecord(m.key, m.value, tp.partition, m.offset)
                               for m in messages)
                got += len(messages)
            if got:
                last_new = time.monotonic()
            elif time.monotonic() - last_new >= timeout_s:
                break
    finally:
        await consumer.stop()
    return records


def read_topic(bootstrap: str, topic: str, **kwargs: Any) -> list[TopicRecord]:
    """Blocking form of :func:`read_topic_async` (runs its own event loop)."""
    return asyncio.run(read_topic_async(bootstrap, topic, **kwargs))
