"""Kafka wiring of the ``stream`` core (Faust agents, embedded broker, CLI)."""
