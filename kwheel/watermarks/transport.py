"""Moving control records: one reader and one publisher per worker process."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, cast

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec

from ..config import WorkerConfig
from ..errors import BrokerError
from ..kafka import clients
from .control import Control
from .upstream import WatermarkTable

if TYPE_CHECKING:
    from ..kafka.clients import ConsumedMessage

log = logging.getLogger("kwheel.watermarks")


class WatermarkReader:
    """Follows the pipeline's watermark topic from its start into a WatermarkTable."""

    def __init__(self, cfg: WorkerConfig, topic: str, table: WatermarkTable):
        self.topic = topic
        self.table = table
        conf = clients.reader_config(cfg)
        conf["isolation.level"] = "read_uncommitted"
        self._c = Consumer(conf)
        self._c.assign([TopicPartition(topic, 0, 0)])
        self._end = 0

    def poll(self, timeout_s: float = 0.0) -> int:
        n = 0
        for m in cast("list[ConsumedMessage]", self._c.consume(10000, timeout_s)):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._end = m.offset()
                    continue
                raise KafkaException(err)
            try:
                self.table.add(Control.decode(m.value() or b""))  # a tombstone is malformed too
                n += 1
            except Exception as e:  # a foreign or corrupt record must not stop the pipeline
                log.warning(
                    "skipping malformed control record at %s[0]@%d: %s", self.topic, m.offset(), e
                )
        return n

    def catch_up(self, timeout_s: float) -> None:
        """Read to the current end, so producers resume above what they published before."""
        _, high = self._c.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while (
            self._c.position([TopicPartition(self.topic, 0)])[0].offset < high and self._end < high
        ):
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"could not read the watermark topic {self.topic} to its end within {timeout_s:g}s"
                )
            self.poll(0.1)

    def close(self) -> None:
        self._c.close()


def read_to_end(cfg: WorkerConfig, topic: str) -> WatermarkTable:
    """A table of the watermark topic as it is now (for one look, not to follow it)."""
    table = WatermarkTable()
    reader = WatermarkReader(cfg, topic, table)
    try:
        reader.catch_up(cfg.startup_timeout_s)
    finally:
        reader.close()
    return table


class WatermarkPublisher:
    """Publishes control records, with end offsets of what they cover."""

    def __init__(self, cfg: WorkerConfig, topic: str):
        self.topic = topic
        self._producer = Producer(clients.producer_config(cfg))
        self._admin = clients.admin(cfg)
        self._timeout = cfg.startup_timeout_s

    def end_offsets(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """High watermarks: every record written to these partitions so far is below them.

        Not the last stable offset: another producer's transaction that opened earlier
        holds the LSO below records this producer has already committed after it."""
        if not tps:
            return {}
        futs = self._admin.list_offsets(
            {TopicPartition(t, p): OffsetSpec.latest() for t, p in tps},
            isolation_level=IsolationLevel.READ_UNCOMMITTED,
            request_timeout=self._timeout,
        )
        return {(tp.topic, tp.partition): f.result().offset for tp, f in futs.items()}

    def publish(self, control: Control) -> None:
        self._producer.produce(
            self.topic, control.encode(), control.key, timestamp=control.wall_time
        )
        self._producer.poll(0)

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for delivery; the number of control records still undelivered."""
        return self._producer.flush(timeout_s)
