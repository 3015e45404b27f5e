"""Broker behaviour kwheel relies on or works around, checked on whichever broker runs the tests.

These pin down what was measured on the embedded test broker, so a change in it (or a
real Kafka behaving differently) shows up here first.
"""

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def _topic(kafka) -> str:
    name = f"gap-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for f in admin.create_topics([NewTopic(name, 1, 1)]).values():
        f.result()
    return name


def _producer(kafka, tid):
    p = Producer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "transactional.id": tid,
            "linger.ms": 0,
            "log_level": 0,
        }
    )
    p.init_transactions(10)
    return p


def _live_reader(kafka, topic, got, stop):
    c = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": "gap",
            "isolation.level": "read_committed",
            "log_level": 0,
        }
    )
    c.assign([TopicPartition(topic, 0, 0)])
    while not stop.is_set():
        got.extend(m.value() for m in c.consume(100, 0.1) if m.error() is None)
    c.close()


def _successor_visibility(kafka, successor_tid_suffix: str) -> list[bytes]:
    """A producer's transaction is left open, a successor fences it and commits records;
    what does a read_committed reader that was waiting all along see?"""
    topic = _topic(kafka)
    got, stop = [], threading.Event()
    reader = threading.Thread(target=_live_reader, args=(kafka, topic, got, stop))
    reader.start()
    tid = f"gap-{uuid.uuid4().hex[:8]}"
    zombie = _producer(kafka, tid)
    zombie.begin_transaction()
    zombie.produce(topic, b"zombie", partition=0)
    zombie.flush(10)
    fencer = _producer(kafka, tid)  # fences the zombie: its transaction is aborted
    successor = fencer if not successor_tid_suffix else _producer(kafka, tid + successor_tid_suffix)
    return _commit_and_watch(successor, topic, b"successor", got, stop, reader)


def _commit_and_watch(producer, topic, value, got, stop, reader) -> list[bytes]:
    """Commit ``value`` in a transaction, give the live reader 5 s to see it, stop it."""
    producer.begin_transaction()
    producer.produce(topic, value, partition=0)
    producer.commit_transaction(10)
    deadline = time.monotonic() + 5
    while value not in got and time.monotonic() < deadline:
        time.sleep(0.1)  # polling what the reader thread collected, bounded
    stop.set()
    reader.join(10)
    return got


def test_a_successor_with_a_fresh_producer_id_is_seen_by_live_readers(kafka):
    """What kwheel relies on: each task incarnation writes with a new transactional id."""
    assert _successor_visibility(kafka, ".next") == [b"successor"]


def test_a_successor_reusing_the_fenced_producer_id_is_seen_by_live_readers(kafka):
    """Kafka semantics; the embedded broker hides the successor from a reader that waited
    on the aborted transaction (a fresh reader sees it). kwheel avoids depending on it."""
    got = _successor_visibility(kafka, "")
    if kafka.embedded and got != [b"successor"]:
        pytest.xfail(
            "known embedded-broker defect: a fenced producer id's later records are "
            "hidden from live read_committed readers"
        )
    assert got == [b"successor"]


def test_records_committed_after_an_abort_reach_a_reader_that_waited_on_it(kafka):
    """Kafka semantics; the embedded broker lets a read_committed reader that was waiting on
    the aborted transaction move past the same producer's later committed records. So a
    kwheel task goes on after an abort with a fresh producer id (Task.renew)."""
    topic = _topic(kafka)
    got, stop = [], threading.Event()
    reader = threading.Thread(target=_live_reader, args=(kafka, topic, got, stop))
    reader.start()
    producer = _producer(kafka, f"gap-{uuid.uuid4().hex[:8]}")
    producer.begin_transaction()
    producer.produce(topic, b"aborted", partition=0)
    producer.flush(10)
    time.sleep(0.5)  # the reader now waits on the open transaction (the state under test)
    producer.abort_transaction(10)
    got = _commit_and_watch(producer, topic, b"after", got, stop, reader)
    if kafka.embedded and got != [b"after"]:
        pytest.xfail(
            "known embedded-broker defect: a live read_committed reader skips a producer id's "
            "records committed after its abort"
        )
    assert got == [b"after"]
