"""Deleting repartition records once they are consumed, so repartition topics stay small.

A repartition topic (``<pipeline>.<computation>.<stream>.repartition``) is internal: one
computation's tasks read it, in one consumer group, and nothing reads it again (a restore
replays the changelog, not the input). So once a task's transaction has committed its
input offset there, the records below it are garbage: the runner deletes them with
``DeleteRecords`` every ``repartition_purge_interval_ms``, as Kafka Streams does after its
commits (``repartition.purge.interval.ms``). 0 turns it off. Source and output streams
are the user's data and are never deleted.

Deletion is asynchronous and best effort: a failed request is logged and tried again at
the next interval; the offset deleted below is never above a committed one, so the next
owner of a partition never finds its starting records gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Protocol

from confluent_kafka import KafkaException, TopicPartition

from ..config import WorkerConfig
from ..kafka import clients

log = logging.getLogger("kwheel.worker")


class _Committed(Protocol):
    """What the purger reads of a task: its input offsets as last committed."""

    committed_offsets: dict[str, int]


class RepartitionPurger:
    def __init__(self, cfg: WorkerConfig, topics: list[str]):
        self.topics = topics  # the computation's repartition inputs
        self.interval_s = cfg.repartition_purge_interval_ms / 1000
        self.request_timeout_s = max(1.0, cfg.startup_timeout_s)
        self.admin = clients.admin(cfg) if topics and self.interval_s > 0 else None
        self.deleted: dict[tuple[str, int], int] = {}  # (topic, partition) -> deleted below
        self._inflight: dict[tuple[str, int], tuple[int, Future[object]]] = {}
        self._last = time.monotonic()

    def maybe_purge(self, tasks: Mapping[int, _Committed]) -> None:
        """Delete what the tasks have committed past, at most once an interval."""
        if self.admin is None or time.monotonic() - self._last < self.interval_s:
            return
        self._last = time.monotonic()
        self._collect()
        todo = []
        for p, task in tasks.items():
            for topic in self.topics:
                offset = task.committed_offsets.get(topic)
                where = (topic, p)
                if offset and offset > self.deleted.get(where, 0) and where not in self._inflight:
                    todo.append(TopicPartition(topic, p, offset))
        if not todo:
            return
        try:
            futures = self.admin.delete_records(todo, request_timeout=self.request_timeout_s)
        except KafkaException as e:  # refused locally: try again next time
            log.warning("deleting consumed repartition records: %s", e)
            return
        for tp, future in futures.items():
            self._inflight[(tp.topic, tp.partition)] = (tp.offset, future)

    def _collect(self) -> None:
        """Take in the requests that finished; log the ones that failed."""
        for where, (offset, future) in list(self._inflight.items()):
            if not future.done():
                continue
            del self._inflight[where]
            try:
                future.result()
            except KafkaException as e:
                log.warning(
                    "could not delete %s[%d] below offset %d (tried again later): %s",
                    where[0],
                    where[1],
                    offset,
                    e.args[0].str() if e.args else e,
                )
                continue
            self.deleted[where] = max(offset, self.deleted.get(where, 0))

    def close(self) -> None:
        """Wait briefly for requests in flight (they run in librdkafka's threads)."""
        deadline = time.monotonic() + 2
        while self._inflight and time.monotonic() < deadline:
            self._collect()
            time.sleep(0.02)
