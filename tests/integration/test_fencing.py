"""Producer fencing at the task level, deterministically: the new owner of a task fences the old."""

from contextlib import contextmanager

import pytest
from confluent_kafka import Consumer

from kwheel.config import WorkerConfig
from kwheel.errors import FencedError
from kwheel.runtime.runner import ComputationRunner
from kwheel.runtime.task import Task
from kwheel.testing.readers import read_committed
from kwheel.watermarks.transport import WatermarkPublisher, WatermarkReader
from kwheel.watermarks.upstream import WatermarkTable
from tests.helpers import inject, make_events, setup_topics
from tests.pipelines.counting import keyed_count


def _messages(bootstrap, topic, partition, n):
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "fetch",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    from confluent_kafka import TopicPartition

    c.assign([TopicPartition(topic, partition, 0)])
    out = []
    while len(out) < n:
        out += [m for m in c.consume(n - len(out), 5) if not m.error()]
    c.close()
    return out


def _one_partition(kafka, name, tmp_path, n):
    """A one-partition keyed count with n events in, those events, a group consumer, and
    a maker of tasks for partition 0, each with its own state directory."""
    p = keyed_count(name, partitions=1).validate()
    setup_topics(kafka.bootstrap, p)
    inject(kafka.bootstrap, p, make_events(n, keys=5))
    msgs = _messages(kafka.bootstrap, f"{name}.events", 0, n)
    group = Consumer(
        {"bootstrap.servers": kafka.bootstrap, "group.id": p.group_id("counter"), "log_level": 0}
    )

    def task(state: str) -> Task:
        cfg = WorkerConfig(bootstrap_servers=kafka.bootstrap, state_dir=tmp_path / state)
        return Task(p, p.computations["counter"], 0, cfg, group)

    return p, msgs, group, task


def test_new_owner_fences_the_old_one_and_its_batch_vanishes(kafka, name, tmp_path):
    p, msgs, group, task = _one_partition(kafka, name, tmp_path, 50)
    old = task("old")
    old.open()
    old.process(msgs[:30])  # an open transaction with outputs and changelog to come
    new = task("new")
    new.open(
        2, fence_from=0
    )  # opens the ids of incarnations 0 and 1 first: the old producer is fenced
    with pytest.raises(FencedError, match="fenced"):
        old.commit()
    assert read_committed(kafka.bootstrap, f"{name}.counts") == []
    new.process(msgs)
    new.commit()
    assert len(read_committed(kafka.bootstrap, f"{name}.counts")) == 50
    new.close()
    group.close()


def test_a_fenced_id_opened_again_writes_again(kafka, name, tmp_path):
    """Why fencing by transactional id is not enough alone: a process paused in the middle
    of opening its task (a zombie) opens its id again when it wakes, after the successor
    fenced it, and that id can then commit. The check below is what stops it."""
    p, msgs, group, task = _one_partition(kafka, name, tmp_path, 20)
    new = task("new")
    new.open(2, fence_from=0)  # incarnation 1's id is fenced now
    zombie = task("zombie")
    zombie.open(1)  # ...and opened again by the zombie finishing its open
    zombie.process(msgs)
    zombie.commit()
    assert len(read_committed(kafka.bootstrap, f"{name}.counts")) == 20
    for t in (new, zombie):
        t.close()
    group.close()


@contextmanager
def _processes(kafka, p, tmp_path, *names):
    """What worker processes build, one per name, closed at the end."""
    runners = [_process(kafka, p, tmp_path / n) for n in names]
    try:
        yield runners
    finally:
        for r in runners:
            # close() may serve the group's first assignment (never polled for here), and
            # the runner's callback would wait startup_timeout_s for the offsets of a
            # consumer that is closing: 30 s of nothing
            r.cfg.startup_timeout_s = 1.0
            r.consumer.close()
            r.test_reader.close()


def _process(kafka, p, state_dir) -> ComputationRunner:
    """What a worker process builds: its watermark table, reader, publisher and runner."""
    cfg = WorkerConfig(bootstrap_servers=kafka.bootstrap, state_dir=state_dir)
    table = WatermarkTable()
    reader = WatermarkReader(cfg, p.watermark_topic(), table)
    reader.catch_up(10)
    runner = ComputationRunner(
        p,
        "counter",
        cfg,
        table,
        WatermarkPublisher(cfg, p.watermark_topic()),
        lambda: reader.catch_up(10),
    )
    runner.test_reader = reader
    return runner


def test_an_owner_that_finishes_opening_after_its_successor_announced_gives_up(
    kafka, name, tmp_path
):
    p = keyed_count(name, partitions=1).validate()
    setup_topics(kafka.bootstrap, p)
    with _processes(kafka, p, tmp_path, "zombie", "successor") as (zombie, successor):
        incarnation, token = zombie.claims.announce(0)
        assert incarnation == 1
        # the zombie pauses here; its successor is assigned the task, announces and opens it
        successor.catch_up()  # as _on_assign does first
        incarnation, token2 = successor.claims.announce(0)
        assert incarnation == 2
        task = Task(p, p.computations["counter"], 0, successor.cfg, successor.consumer)
        task.open(
            2, fence_from=0, check_owner=successor.claims.check_still_owner, owner=token2
        )  # the newest: goes on
        # the zombie wakes and finishes opening incarnation 1, reopening its fenced id
        stale = Task(p, p.computations["counter"], 0, zombie.cfg, zombie.consumer)
        with pytest.raises(
            FencedError,
            match=r"incarnation 2 took it over while this process was opening incarnation 1",
        ):
            stale.open(1, check_owner=zombie.claims.check_still_owner, owner=token)
        stale.close()
        task.close()


def test_of_two_openings_that_claimed_the_same_incarnation_the_later_claim_wins(
    kafka, name, tmp_path
):
    # both read the topic before either announced, so both claim incarnation 1; the one whose
    # announcement is later on the topic owns the task, the other gives up before restoring
    p = keyed_count(name, partitions=1).validate()
    setup_topics(kafka.bootstrap, p)
    with _processes(kafka, p, tmp_path, "first", "second") as (first, second):
        n1, token1 = first.claims.announce(0)
        n2, token2 = second.claims.announce(0)
        assert n1 == n2 == 1 and token1 != token2
        loser = Task(p, p.computations["counter"], 0, first.cfg, first.consumer)
        with pytest.raises(FencedError, match="was fenced"):
            loser.open(1, check_owner=first.claims.check_still_owner, owner=token1)
        loser.close()
        winner = Task(p, p.computations["counter"], 0, second.cfg, second.consumer)
        winner.open(1, check_owner=second.claims.check_still_owner, owner=token2)
        winner.close()


def test_an_announcement_written_after_a_newer_one_puts_the_newer_one_back(kafka, name, tmp_path):
    # a process that read the topic long ago claims incarnation 1 after 2 was announced; the
    # compacted topic keeps only the last announcement per task, so the stale one would
    # stand for the owner to every new reader: the stale opener writes the owner's claim again
    from kwheel.watermarks.control import Control

    p = keyed_count(name, partitions=1).validate()
    setup_topics(kafka.bootstrap, p)
    with _processes(kafka, p, tmp_path, "stale", "owner") as (stale, owner):
        assert owner.claims.announce(0)[0] == 1
        n, token = owner.claims.announce(0)
        assert n == 2
        with pytest.raises(
            FencedError,
            match="incarnation 2 took it over while this process was announcing incarnation 1",
        ):
            stale.claims.announce(0)
        last = Control.decode(read_committed(kafka.bootstrap, p.watermark_topic())[-1].value)
        assert last.announce and (last.incarnation, last.owner) == (2, token)
