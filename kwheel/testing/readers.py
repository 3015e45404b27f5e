"""Read what a pipeline on a broker committed: a topic's records as a read_committed
consumer sees them (all of them, or following the topic), the low watermarks its tasks
publish, and a consumer group's committed offsets."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from ..config import WorkerConfig
from ..kafka.writer import ID_HEADER
from ..pipeline import Pipeline
from ..watermarks import MIN_WATERMARK
from ..watermarks.control import task_producer_id
from ..watermarks.transport import WatermarkReader
from ..watermarks.upstream import WatermarkTable

if TYPE_CHECKING:
    from ..kafka.clients import ConsumedMessage


@dataclass(frozen=True)
class CommittedRecord:
    key: bytes | None
    value: bytes | None
    timestamp: int
    id: bytes | None
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes | None], ...]


def read_committed(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[CommittedRecord]:
    """Every committed record of ``topic`` (all partitions), in partition/offset order."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "kwheel-verify",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "log_level": 3,
        }
    )
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        if md.error is not None:
            raise KafkaException(md.error)
        parts = sorted(md.partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        todo = {p for p in parts if ends[p] > 0}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[CommittedRecord] = []
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading {topic}: partitions {sorted(todo)} did not reach their end in {timeout_s}s"
                )
            for m in cast("list[ConsumedMessage]", c.consume(10000, 0.05)):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if m.offset() >= ends[m.partition()]:
                            todo.discard(m.partition())
                        continue
                    raise KafkaException(err)
                hdrs = tuple(m.headers() or ())
                rid = next((v for k, v in hdrs if k == ID_HEADER), None)
                out.append(
                    CommittedRecord(
                        m.key(), m.value(), m.timestamp()[1], rid, m.partition(), m.offset(), hdrs
                    )
                )
                if m.offset() >= ends[m.partition()] - 1:
                    todo.discard(m.partition())
        out.sort(key=lambda r: (r.partition, r.offset))
        return out
    finally:
        c.close()


class CommittedTail:
    """Follow a topic from its start, returning newly committed records on each ``poll()``.
    ``config`` adds or overrides consumer settings (e.g. ``fetch.wait.max.ms``)."""

    def __init__(self, bootstrap: str, topic: str, config: dict[str, object] | None = None):
        self._c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "kwheel-tail",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "log_level": 3,
                **(config or {}),
            }
        )
        md = self._c.list_topics(topic, timeout=10).topics[topic]
        self._c.assign([TopicPartition(topic, p, 0) for p in md.partitions])

    def poll(self, timeout_s: float = 0.5, max_records: int = 100_000) -> list[CommittedRecord]:
        """What was committed since the last call: librdkafka's ``consume`` returns once it
        has ``max_records`` or ``timeout_s`` passed."""
        out = []
        for m in cast("list[ConsumedMessage]", self._c.consume(max_records, timeout_s)):
            if m.error() is None:
                hdrs = tuple(m.headers() or ())
                rid = next((v for k, v in hdrs if k == ID_HEADER), None)
                out.append(
                    CommittedRecord(
                        m.key(), m.value(), m.timestamp()[1], rid, m.partition(), m.offset(), hdrs
                    )
                )
        return out

    def close(self) -> None:
        self._c.close()


class WatermarkTail:
    """Follow a pipeline's watermark topic from its start: ``poll()`` reads what its tasks
    published since, ``output_watermark`` tells how far a computation has got."""

    def __init__(self, bootstrap: str, pipeline: Pipeline):
        self._pipeline = pipeline.validate()
        self._table = WatermarkTable()
        self._reader = WatermarkReader(
            WorkerConfig(bootstrap_servers=bootstrap), pipeline.watermark_topic(), self._table
        )

    def poll(self, timeout_s: float = 0.0) -> None:
        self._reader.poll(timeout_s)

    def output_watermark(self, computation: str) -> int:
        """min over the computation's tasks of the watermark they last published
        (MIN_WATERMARK until every task has published one)."""
        latest = [
            self._table.latest(task_producer_id(computation, p))
            for p in range(self._pipeline.computations[computation].partitions)
        ]
        return (
            min((c.watermark for c in latest if c), default=MIN_WATERMARK)
            if all(latest)
            else MIN_WATERMARK
        )

    def close(self) -> None:
        self._reader.close()


class CommittedOffsets:
    """A consumer group's committed offsets and topics' end offsets, through one client
    that stays open, so polling them costs one request each (``OffsetFetch``, which does
    not touch the group's members)."""

    def __init__(self, bootstrap: str, group: str):
        self._c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "log_level": 0,
            }
        )

    def total(self, topic: str, partitions: int) -> int:
        """Sum of the group's committed offsets on ``topic``: its progress."""
        tps = self._c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)

    def ends(self, topic: str, partitions: int) -> list[int]:
        """Each partition's end offset (high watermark)."""
        return [
            self._c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        ]

    def close(self) -> None:
        self._c.close()

    def __enter__(self) -> CommittedOffsets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Sum of ``group``'s committed offsets on ``topic``: cheap progress for polling."""
    with CommittedOffsets(bootstrap, group) as c:
        return c.total(topic, partitions)
