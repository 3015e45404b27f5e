"""Consumed repartition records are deleted (DeleteRecords), never above what a task has
committed: the counts stay exact, the topic keeps only what is not yet processed, and a
worker killed and restarted mid-stream resumes where it committed."""

from __future__ import annotations

from collections import Counter

from confluent_kafka import Consumer, TopicPartition

from kwheel.testing.processes import wait_until
from tests.helpers import check_exact_counts, count_outputs, inject, setup_topics
from tests.pipelines.counting import rekeyed_count

COUNTRIES = ["de", "fr", "jp", "br", "us", "ke", "in"]
FAST = {"KWHEEL_REPARTITION_PURGE_INTERVAL_MS": "100"}


def _events(n: int, first: int = 0) -> list[tuple[str, dict]]:
    return [
        (
            f"u{i % 53}",
            {"user": f"u{i % 53}", "country": COUNTRIES[(i * 7) % len(COUNTRIES)], "seq": i},
        )
        for i in range(first, first + n)
    ]


def _bounds(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, int]]:
    """(log start, end) of each partition."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "kwheel-test-bounds"})
    try:
        return [
            c.get_watermark_offsets(TopicPartition(topic, q), timeout=10) for q in range(partitions)
        ]
    finally:
        c.close()


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, q) for q in range(partitions)], timeout=10)
        return [max(tp.offset, 0) for tp in tps]
    finally:
        c.close()


def test_consumed_repartition_records_are_deleted_and_counts_stay_exact(kafka, name, workers):
    p = rekeyed_count(name)
    setup_topics(kafka.bootstrap, p)
    topic = f"{name}.counter.events.repartition"
    parts = p.topics()[topic][0]
    first = _events(1500)
    inject(kafka.bootstrap, p, first)
    w = workers("tests.pipelines.counting:rekeyed_count", name, slot="s0", env=FAST)
    wait_until(lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(first), 60, "counts")
    # everything is processed: the log start of every partition comes up to the committed
    # offset (the last transaction's commit marker, after it, stays) and no record is left
    group = p.group_id("counter")
    wait_until(
        lambda: (
            [lo for lo, _ in _bounds(kafka.bootstrap, topic, parts)]
            == _committed(kafka.bootstrap, group, topic, parts)
        ),
        30,
        "the repartition topic to be deleted up to the committed offsets",
    )
    assert sum(lo for lo, _ in _bounds(kafka.bootstrap, topic, parts)) >= len(first)
    assert count_outputs(kafka.bootstrap, topic) == 0
    # a SIGKILL mid-stream, then a restart: deletion never passed a committed offset
    second = _events(1500, first=1500)
    inject(kafka.bootstrap, p, second)
    w.kill()
    for (lo, _), committed in zip(
        _bounds(kafka.bootstrap, topic, parts), _committed(kafka.bootstrap, group, topic, parts)
    ):
        assert lo <= committed
    w = workers("tests.pipelines.counting:rekeyed_count", name, slot="s0", env=FAST)
    events = first + second
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 60, "all counts"
    )
    assert w.stop() == 0
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(v["country"] for _, v in events))
    assert "records were deleted before being processed" not in w.log()


def test_purging_can_be_turned_off(kafka, name, workers):
    p = rekeyed_count(name)
    setup_topics(kafka.bootstrap, p)
    topic = f"{name}.counter.events.repartition"
    parts = p.topics()[topic][0]
    events = _events(600)
    inject(kafka.bootstrap, p, events)
    env = {"KWHEEL_REPARTITION_PURGE_INTERVAL_MS": "0"}
    w = workers("tests.pipelines.counting:rekeyed_count", name, slot="s0", env=env)
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 60, "all counts"
    )
    assert w.stop() == 0
    assert all(lo == 0 for lo, _ in _bounds(kafka.bootstrap, topic, parts))
    assert count_outputs(kafka.bootstrap, topic) == len(events)
