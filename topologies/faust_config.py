"""The Faust app configuration from ``KafkaSettings``: transport, store, web server, tables,
the broker's workarounds (``faust_fixes.broker_settings_for_tansu``) and client security."""

from __future__ import annotations

from typing import Any

import faust

from topologies import faust_fixes
from topologies.kafka_io import security_kwargs
from topologies.settings import KafkaSettings


def faust_config(s: KafkaSettings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker": f"{faust_fixes.CHUNK_SCHEME}://" + (s.bootstrap_servers or "127.0.0.1:9092"),
        "store": "memory://",
        "topic_partitions": s.partitions,
        "topic_replication_factor": 1,
        "web_port": s.web_port,
        "web_bind": s.web_bind,
        "web_host": s.web_bind,
        "datadir": s.state_dir,
        "table_standby_replicas": 0,
        "consumer_auto_offset_reset": "earliest",
        # Faust's producer carries only table writes, sent a chunk's worth at once
        # (faust_fixes.changelog_batches): one produce request each, not one per 16 KiB.
        "producer_max_batch_size": faust_fixes.CHANGELOG_BATCH_BYTES,
    }
    config.update(faust_fixes.broker_settings_for_tansu(s.session_timeout_s))
    credentials = faust_credentials(s)
    if credentials is not None:
        config["broker_credentials"] = credentials
    return config


def faust_credentials(s: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    """SASL / TLS settings as Faust credentials (None for PLAINTEXT)."""
    opts = security_kwargs(s, "aiokafka")
    if not opts:
        return None
    if opts.get("sasl_mechanism"):
        return faust.SASLCredentials(
            username=opts["sasl_plain_username"], password=opts["sasl_plain_password"],
            mechanism=opts["sasl_mechanism"], ssl_context=opts.get("ssl_context"))
    return faust.SSLCredentials(opts["ssl_context"])
