"""Runs one computation in this process: its consumer-group member and the tasks it owns."""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from ..config import WorkerConfig
from ..errors import BrokerError, FencedError
from ..kafka import clients
from ..pipeline import Pipeline
from .task import Task

log = logging.getLogger("kwheel.worker")


class ComputationRunner:
    """Consumes the computation's input topics and drives one Task per assigned partition."""

    def __init__(self, pipeline: Pipeline, computation: str, cfg: WorkerConfig):
        self.pipeline = pipeline
        self.spec = pipeline.computations[computation]
        self.cfg = cfg
        self.topics = [ti.topic for ti in pipeline.task_inputs(computation)]
        instance = f"{cfg.slot}" if cfg.slot else None
        conf = clients.group_consumer_config(cfg, pipeline.group_id(computation), instance)
        self.consumer = Consumer(conf)
        self.tasks: dict[int, Task] = {}
        self._last_commit = time.monotonic()
        self._fatal: Exception | None = None
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    # ---- group membership --------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        try:
            for p in sorted({tp.partition for tp in parts}):
                if p in self.tasks:
                    continue
                task = Task(self.pipeline, self.spec, p, self.cfg, consumer)
                task.open()
                self.tasks[p] = task
                log.info("%s: assigned and ready (restored %d records)", task.name, task.counters.restored)
        except Exception as e:  # raised inside librdkafka's callback: surface it from step()
            self._fatal = e
        consumer.assign(parts)

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        for p in sorted({tp.partition for tp in parts}):
            task = self.tasks.pop(p, None)
            if task is None:
                continue
            try:
                task.commit()
            except FencedError as e:
                log.warning("%s", e)
            except Exception as e:
                log.warning("%s: commit on revoke failed: %s", task.name, e)
            task.close()
            log.info("%s: revoked", task.name)

    def _on_lost(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Partitions lost (session expired): someone else may own them, so do not commit.
        for p in sorted({tp.partition for tp in parts}):
            task = self.tasks.pop(p, None)
            if task is not None:
                try:
                    task.abort()
                except Exception:
                    pass
                task.close()
                log.warning("%s: partitions lost (session expired)", task.name)

    # ---- the loop ------------------------------------------------------------------------
    def step(self, timeout: float) -> None:
        """Consume one batch, process it by task, and commit when a batch closes."""
        msgs = self.consumer.consume(self.cfg.batch_size, timeout)
        if self._fatal is not None:
            err, self._fatal = self._fatal, None
            raise err
        by_task: dict[int, list] = defaultdict(list)
        for m in msgs:
            err = m.error()
            if err is not None:
                self._consumer_error(err)
                continue
            by_task[m.partition()].append(m)
        for p, ms in by_task.items():
            task = self.tasks.get(p)
            if task is None:
                continue  # fenced or not (yet) ours: the group will reassign it
            try:
                task.process(ms)
            except Exception:
                self._abort_task(task)
                raise
        due = time.monotonic() - self._last_commit >= self.cfg.commit_interval_ms / 1000
        if due or any(t.pending >= self.cfg.batch_size for t in self.tasks.values()):
            self.commit()

    def _consumer_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal() or err.code() == KafkaError._FATAL:
            if "fenced" in err.str().lower():
                raise FencedError(
                    f"worker slot {self.cfg.slot!r} was fenced in group {self.pipeline.group_id(self.spec.name)!r}: "
                    f"another process joined with the same slot id ({err.str()})"
                )
            raise BrokerError(f"consumer of {self.spec.name!r} failed: {err.str()}")
        log.warning("%s: consumer: %s", self.spec.name, err.str())

    def commit(self) -> None:
        for p, task in list(self.tasks.items()):
            try:
                task.commit()
            except FencedError as e:
                log.error("%s", e)
                self._drop(p)
        self._last_commit = time.monotonic()

    def _abort_task(self, task: Task) -> None:
        try:
            task.abort()
        except Exception as e:
            log.warning("%s: abort failed: %s", task.name, e)

    def _drop(self, p: int) -> None:
        """Stop processing a partition another worker owns now (a zombie's fate)."""
        task = self.tasks.pop(p, None)
        if task is not None:
            task.close()
        try:
            self.consumer.pause([TopicPartition(t, p) for t in self.topics])
        except KafkaException:
            pass

    def close(self, commit: bool = True) -> None:
        """Commit (unless failing), then leave the group (revoke closes the tasks)."""
        if commit:
            self.commit()
        else:
            for task in self.tasks.values():
                self._abort_task(task)
        try:
            self.consumer.close()
        except KafkaException as e:
            log.warning("%s: closing consumer: %s", self.spec.name, e)
        for task in self.tasks.values():
            task.close()
        self.tasks.clear()
