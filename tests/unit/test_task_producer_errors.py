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


@pytest.mark.parametrize(
    "code, text",
    [
        (KafkaError._FENCED, "Local: This instance has been fenced by a newer instance"),
        (KafkaError.PRODUCER_FENCED, "Producer fenced"),
        (
            KafkaError._FATAL,
            "Local: Fatal error",
        ),  # what librdkafka says on every call after the fencing
    ],
)
def test_a_fenced_or_fatal_producer_ends_the_task_as_fenced(task, code, text):
    task.txn.producer = FailingProducer(task.txn.producer, code, text, on="begin")
    with pytest.raises(FencedError, match=re.escape(f"task {task.name} was fenced")):
        task.process([])


def test_another_producer_error_is_a_broker_error(task):
    task.txn.producer = FailingProducer(
        task.txn.producer, KafkaError._TRANSPORT, "Local: Broker transport failure", on="begin"
    )
    with pytest.raises(BrokerError, match="producer failed: Local: Broker transport failure"):
        task.process([])


def test_closing_a_task_whose_producer_was_fenced_does_not_raise(driver, task, caplog):
    driver._tasks["counter"].remove(task)  # closed here, not again by the driver
    task.txn.producer = FailingProducer(
        task.txn.producer, KafkaError._FATAL, "Local: Fatal error", on="flush"
    )
    with caplog.at_level(logging.INFO, logger="kwheel"):
        task.close()
    assert task.txn.producer is None
    assert "producer gone (Local: Fatal error)" in caplog.text


class ScriptedInit:
    """Stands in for confluent_kafka.Producer in Task.fence: init_transactions fails with
    the scripted errors, then succeeds."""

    errors: list[KafkaError] = []
    calls = 0

    def __init__(self, conf):
        self.transactional_id = conf["transactional.id"]

    def init_transactions(self, timeout):
        type(self).calls += 1
        if self.errors:
            raise KafkaException(self.errors.pop(0))


TIMED_OUT = KafkaError(
    KafkaError._TIMED_OUT,
    "Timed out waiting for operation to finish, retry call to resume",
    retriable=True,
)


def test_opening_retries_a_timed_out_init_even_past_the_deadline_once(task, monkeypatch):
    # a zombie paused inside init_transactions wakes with its time used up: one more try
    monkeypatch.setattr(task.txn, "make_producer", ScriptedInit)
    ScriptedInit.errors, ScriptedInit.calls = [TIMED_OUT], 0
    producer = task.txn.open_id("driven.counter.0.3", deadline=0.0)
    assert producer.transactional_id == "driven.counter.0.3"
    assert ScriptedInit.calls == 2


def test_opening_gives_up_after_the_deadline_with_one_line(task, monkeypatch):
    monkeypatch.setattr(task.txn, "make_producer", ScriptedInit)
    ScriptedInit.errors, ScriptedInit.calls = [TIMED_OUT, TIMED_OUT, TIMED_OUT], 0
    with pytest.raises(
        BrokerError,
        match=r"could not open transactional id 'driven.counter.0.3' within "
        r"startup_timeout_s=\d+: Timed out",
    ):
        task.txn.open_id("driven.counter.0.3", deadline=0.0)
    assert ScriptedInit.calls == 2


def test_opening_a_fenced_id_is_fenced_at_once(task, monkeypatch):
    monkeypatch.setattr(task.txn, "make_producer", ScriptedInit)
    ScriptedInit.errors, ScriptedInit.calls = (
        [KafkaError(KafkaError.PRODUCER_FENCED, "Producer fenced")],
        0,
    )
    with pytest.raises(FencedError):
        task.txn.open_id("driven.counter.0.3", deadline=1e18)
    assert ScriptedInit.calls == 1


class StalledAbort(MemoryProducer):
    """abort_transaction times out (a stalled broker) ``stalls`` times, then aborts."""

    def __init__(self, base: MemoryProducer, stalls: int):
        super().__init__(base.log, base.transactional_id)
        self.stalls = stalls

    def abort_transaction(self, timeout: float | None = None) -> None:
        if self.stalls:
            self.stalls -= 1
            raise KafkaException(TIMED_OUT)
        super().abort_transaction(timeout)


def test_an_abort_during_a_broker_stall_is_retried(task):
    # seen in the long chaos run: the timed-out abort ended the worker with a traceback
    task.process([])
    task._begin()
    task.txn.producer = StalledAbort(task.txn.producer, stalls=2)
    task.abort()
    assert not task.txn.in_transaction and task.txn.producer.aborts == 1


def test_an_abort_that_never_completes_is_a_one_line_broker_error(task, monkeypatch):
    task.process([])
    task._begin()
    task.txn.producer = StalledAbort(task.txn.producer, stalls=10**9)
    monkeypatch.setattr(task.txn.cfg, "startup_timeout_s", 0.01)
    monkeypatch.setattr(task.txn.cfg, "transaction_timeout_ms", 1)
    with pytest.raises(BrokerError, match=r"could not abort its transaction within"):
        task.abort()
