"""Settings owned by the Kafka topology, on top of the core's ``stream.settings.Settings``.

``KafkaSettings`` adds the broker, topic, worker and client-security settings; environment
overrides work the same way (``FEEDBACK_STREAM_<FIELD>``), so the worker reads both sets from
one environment.

>>> s = KafkaSettings.from_env({"FEEDBACK_STREAM_PARTITIONS": "8",
...                             "FEEDBACK_STREAM_REPHRASE_WINDOW_MS": "30000"})
>>> s.partitions, s.rephrase_window_ms, s.topic("defects")
(8, 30000, 'feedback.defects')
"""

from __future__ import annotations

import dataclasses

from stream.settings import Settings


@dataclasses.dataclass(frozen=True)
class KafkaSettings(Settings):
    """The core settings plus those only the Kafka topology reads."""

    bootstrap_servers: str = ""
    """Empty means: start the embedded tansu broker."""
    input_topic: str = "interactions"
    topic_prefix: str = "feedback."
    app_id: str = "feedback-stream"
    web_port: int = 6066
    web_bind: str = "127.0.0.1"
    state_dir: str = "/tmp/feedback-stream"
    session_timeout_s: float = 6.0
    batch_size: int = 2_000
    """Max input records per chunk an agent processes at once (a fetch is cut into chunks)."""
    fetch_max_wait_ms: int = 100
    """How long the broker may hold a fetch that finds no data (Faust hard-codes 1500)."""
    progress_log_s: float = 30.0
    """How often the worker logs one progress line (events consumed, lag), when it changed."""
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""

    def topic(self, stream: str) -> str:
        """Kafka topic name of an output stream."""
        return f"{self.topic_prefix}{stream}"
