"""feedback-stream core: transport-free, deterministic in event time.

No Kafka, no asyncio, no globals here: ``topologies/`` wires these classes to Kafka.
"""

from stream.engine import DeviceEngine, FeedbackEngine
from stream.records import Output
from stream.settings import Settings

__all__ = ["DeviceEngine", "FeedbackEngine", "Output", "Settings"]
