"""Producer fencing at the task level, deterministically: the new owner of a task fences the old."""

import pytest
from confluent_kafka import Consumer

from kwheel.config import WorkerConfig
from kwheel.errors import FencedError
from kwheel.runtime.task import Task
from kwheel.testing.readers import read_committed
from tests.helpers import inject, make_events, setup_topics
from tests.pipelines.counting import keyed_count


def _messages(bootstrap, topic, partition, n):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "fetch", "isolation.level": "read_committed",
                  "enable.auto.commit": False, "log_level": 0})
    from confluent_kafka import TopicPartition

    c.assign([TopicPartition(topic, partition, 0)])
    out = []
    while len(out) < n:
        out += [m for m in c.consume(n - len(out), 5) if not m.error()]
    c.close()
    return out


def test_new_owner_fences_the_old_one_and_its_batch_vanishes(kafka, name, tmp_path):
    p = keyed_count(name, partitions=1).validate()
    setup_topics(kafka.bootstrap, p)
    inject(kafka.bootstrap, p, make_events(50, keys=5))
    msgs = _messages(kafka.bootstrap, f"{name}.events", 0, 50)
    group = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": p.group_id("counter"), "log_level": 0})
    spec = p.computations["counter"]
    old = Task(p, spec, 0, WorkerConfig(bootstrap_servers=kafka.bootstrap, state_dir=tmp_path / "old"), group)
    old.open()
    old.process(msgs[:30])  # an open transaction with outputs and changelog to come
    new = Task(p, spec, 0, WorkerConfig(bootstrap_servers=kafka.bootstrap, state_dir=tmp_path / "new"), group)
    new.open(2, fence_from=0)  # opens the ids of incarnations 0 and 1 first: the old producer is fenced
    with pytest.raises(FencedError, match="fenced"):
        old.commit()
    assert read_committed(kafka.bootstrap, f"{name}.counts") == []
    new.process(msgs)
    new.commit()
    assert len(read_committed(kafka.bootstrap, f"{name}.counts")) == 50
    new.close()
    group.close()
