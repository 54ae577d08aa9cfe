"""OutputPublisher's error accounting with a producer that fails on purpose (no broker): a
record that a retry delivers is a retry, not an error; a record never delivered is an error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError

from stream.records import Output
from topologies.publisher import OutputPublisher
from topologies.settings import KafkaSettings


class FlakyProducer:
    """Fails the first ``failures`` deliveries of each listed value, then delivers."""

    def __init__(self, failures: dict[bytes, int], error: Exception) -> None:
        self.failures, self.error = dict(failures), error
        self.delivered: list[tuple[str, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.failures.get(value, 0) > 0:
            self.failures[value] -= 1
            future.set_exception(self.error)
        else:
            self.delivered.append((topic, value))
            future.set_result(None)
        return future


def run(failures: dict[bytes, int], retries: int, error: Exception | None = None
        ) -> tuple[FlakyProducer, list[str], list[int], BaseException | None]:
    errors: list[str] = []
    retried: list[int] = []
    publisher = OutputPublisher(KafkaSettings(), lambda name: f"fs.{name}", retries=retries,
                                on_error=errors.append, on_retry=lambda: retried.append(1))
    producer = FlakyProducer(failures, error or UnknownTopicOrPartitionError())

    async def started() -> FlakyProducer:
        return producer

    publisher._started = started  # type: ignore[method-assign]
    outputs = [Output("defects", f"k{i}", {"n": i}) for i in range(4)]
    raised: BaseException | None = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(asyncio, "sleep", _no_sleep)
        try:
            asyncio.run(publisher.publish(outputs))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            raised = exc
    return producer, errors, retried, raised


async def _no_sleep(seconds: float) -> None:
    return None


def test_records_delivered_by_a_retry_are_retries_not_errors() -> None:
    # Two records fail twice (a topic being auto-created): delivered on the third round.
    producer, errors, retried, raised = run({b'{"n":1}': 2, b'{"n":3}': 2}, retries=5)
    assert raised is None
    assert sorted(v for _, v in producer.delivered) == [b'{"n":%d}' % i for i in range(4)]
    assert errors == [] and len(retried) == 2


def test_records_never_delivered_are_errors_once_each_and_the_error_propagates() -> None:
    producer, errors, retried, raised = run({b'{"n":0}': 99, b'{"n":2}': 99}, retries=3,
                                            error=KafkaTimeoutError())
    assert isinstance(raised, KafkaTimeoutError)
    assert errors == ["fs.defects", "fs.defects"]  # the two undelivered records, once each
    assert len(retried) == 3
    assert sorted(v for _, v in producer.delivered) == [b'{"n":1}', b'{"n":3}']
