"""How a task reports its producer's failures: fencing ends the task with one line, and
letting go of a fenced task never raises (it runs inside rebalance callbacks)."""

from __future__ import annotations

import logging
import re

import pytest
from confluent_kafka import KafkaError, KafkaException

from kwheel.errors import BrokerError, FencedError
from kwheel.testing import PipelineDriver
from kwheel.testing.memory import MemoryProducer
from tests.unit.test_driver import two_stage


class FailingProducer(MemoryProducer):
    """A producer whose calls fail with one librdkafka error, as a fenced one does."""

    def __init__(self, base: MemoryProducer, code: int, text: str, on: str):
        super().__init__(base.log, base.transactional_id)
        self._error = KafkaError(code, text)
        self._on = on

    def _fail(self, call: str) -> None:
        if call == self._on:
            raise KafkaException(self._error)

    def begin_transaction(self) -> None:
        self._fail("begin")
        super().begin_transaction()

    def flush(self, timeout: float | None = None) -> int:
        self._fail("flush")
        return 0


@pytest.fixture
def driver():
    with PipelineDriver(two_stage(), wall_clock_ms=0) as d:
        yield d


@pytest.fixture
def task(driver):
    return driver._tasks["counter"][0]


@pytest.mark.parametrize("code, text", [
    (KafkaError._FENCED, "Local: This instance has been fenced by a newer instance"),
    (KafkaError.PRODUCER_FENCED, "Producer fenced"),
    (KafkaError._FATAL, "Local: Fatal error"),  # what librdkafka says on every call after the fencing
])
def test_a_fenced_or_fatal_producer_ends_the_task_as_fenced(task, code, text):
    task.producer = FailingProducer(task.producer, code, text, on="begin")
    with pytest.raises(FencedError, match=re.escape(f"task {task.name} was fenced")):
        task.process([])


def test_another_producer_error_is_a_broker_error(task):
    task.producer = FailingProducer(task.producer, KafkaError._TRANSPORT, "Local: Broker transport failure", on="begin")
    with pytest.raises(BrokerError, match="producer failed: Local: Broker transport failure"):
        task.process([])


def test_closing_a_task_whose_producer_was_fenced_does_not_raise(driver, task, caplog):
    driver._tasks["counter"].remove(task)  # closed here, not again by the driver
    task.producer = FailingProducer(task.producer, KafkaError._FATAL, "Local: Fatal error", on="flush")
    with caplog.at_level(logging.INFO, logger="kwheel"):
        task.close()
    assert task.producer is None
    assert "producer gone (Local: Fatal error)" in caplog.text
