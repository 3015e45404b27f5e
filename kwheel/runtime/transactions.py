"""A task's transactional producer: fencing earlier owners, one transaction at a time.

Each incarnation of a task writes with its own transactional id, ``<task>.<n>``, and
fences the ones before it by opening their ids first (docs/architecture.md). Errors leave
this module as kwheel's own: ``FencedError`` when another process owns the task now,
``BrokerError`` otherwise, read from librdkafka's error codes (kafka/fencing.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from ..config import WorkerConfig
from ..errors import BrokerError, FencedError
from ..kafka import clients
from ..kafka.fencing import is_fatal, is_fenced
from ..kafka.protocols import DeliveredMessage, GroupConsumer, TransactionalProducer
from ..kafka.writer import Message, send

log = logging.getLogger("kwheel.task")
RETRY_BACKOFF_S = 0.2  # between attempts to open a transactional id

# Makes a producer from its librdkafka config: confluent_kafka.Producer, or the in-memory
# one of the test driver (kwheel.testing.memory).
ProducerFactory = Callable[[clients.Config], TransactionalProducer]


class TaskProducer:
    def __init__(self, name: str, cfg: WorkerConfig, make_producer: ProducerFactory | None = None):
        self.name = name  # the task's, for messages
        self.cfg = cfg
        self.make_producer: ProducerFactory = make_producer or Producer
        self.producer: TransactionalProducer | None = None
        self.in_transaction = False
        self.began = 0.0  # monotonic time the open transaction began: batch latency

    # ---- opening ---------------------------------------------------------------------
    def take(self, base: str, incarnation: int, fence_from: int) -> None:
        """Open the ids ``<base>.<fence_from>`` .. ``<base>.<incarnation - 1>`` (fencing
        them), then ``<base>.<incarnation>``, this one's."""
        self.let_go()
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        for n in range(fence_from, incarnation):
            self.open_id(f"{base}.{n}", deadline)
        self.producer = self.open_id(f"{base}.{incarnation}", deadline)

    def open_id(self, transactional_id: str, deadline: float) -> TransactionalProducer:
        """A producer holding ``transactional_id``, whoever held it before fenced.

        A timeout is retried until ``deadline``, and at least once: a process paused in the
        middle of the call (a zombie being resumed) finds its time used up on waking."""
        producer = self.make_producer(
            clients.transactional_producer_config(self.cfg, transactional_id)
        )
        tries = 0
        while True:
            tries += 1
            try:
                producer.init_transactions(max(1.0, deadline - time.monotonic()))
                return producer
            except KafkaException as e:
                err = e.args[0]
                failed = self.failure(err)
                if isinstance(failed, FencedError) or not (
                    err.retriable() or err.code() == KafkaError._TIMED_OUT
                ):
                    raise failed from None
                if tries > 1 and time.monotonic() >= deadline:
                    raise BrokerError(
                        f"task {self.name}: could not open transactional id {transactional_id!r} "
                        f"within startup_timeout_s={self.cfg.startup_timeout_s:g}: {err.str()}"
                    ) from None
                log.warning(
                    "%s: opening transactional id %r: %s; retrying",
                    self.name,
                    transactional_id,
                    err.str(),
                )
                time.sleep(RETRY_BACKOFF_S)  # a retriable error may come back at once

    def let_go(self, timeout_s: float = 0) -> None:
        """Drop the producer, delivering what it holds for up to ``timeout_s``. A producer
        that is fenced or failed has nothing left to deliver: its errors end here."""
        old, self.producer = self.producer, None
        self.in_transaction = False
        if old is not None:
            try:
                old.flush(timeout_s)
            except KafkaException as e:
                log.info("%s: producer gone (%s)", self.name, e.args[0].str() if e.args else e)

    # ---- one transaction ---------------------------------------------------------------
    def _live(self) -> TransactionalProducer:
        if self.producer is None:
            raise BrokerError(f"task {self.name}: no producer (the task is not open)")
        return self.producer

    def begin(self) -> None:
        if not self.in_transaction:
            try:
                self._live().begin_transaction()
            except KafkaException as e:
                raise self.failure(e.args[0]) from None
            self.in_transaction = True
            self.began = time.monotonic()

    def send(self, messages: list[Message]) -> None:
        """Hand records to librdkafka, inside the open transaction."""
        try:
            send(self._live(), messages)
        except KafkaException as e:
            raise self.failure(e.args[0]) from None

    def send_one(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        ts: int,
        headers: list[tuple[str, bytes]],
    ) -> None:
        try:
            self._live().produce(topic, value, key, timestamp=ts, headers=headers)
        except KafkaException as e:
            raise self.failure(e.args[0]) from None

    def commit(
        self,
        changelog: str,
        partition: int,
        changes: list[tuple[bytes, bytes | None]],
        offsets: dict[str, int],
        consumer: GroupConsumer,
    ) -> int | None:
        """Write ``changes`` to the changelog partition, send the input ``offsets`` and
        commit. Returns the changelog offset of the last change (-1 when none), or None
        when the transaction failed and must be aborted (the batch is then replayed).
        Raises FencedError or BrokerError when the producer cannot go on."""
        p = self._live()
        last_offset = [-1]

        def delivered(err: KafkaError | None, msg: DeliveredMessage) -> None:
            if err is None:
                offset = msg.offset()
                if offset is not None:  # None (offset unknown) ends up as never came back
                    last_offset[0] = offset

        try:
            for i, (k, v) in enumerate(changes):
                while True:
                    try:
                        if i == len(changes) - 1:
                            p.produce(changelog, v, k, partition=partition, on_delivery=delivered)
                        else:
                            p.produce(changelog, v, k, partition=partition)
                        break
                    except BufferError:
                        p.poll(0.05)
            self._finish(p, partition, offsets, consumer)
        except KafkaException as e:
            err = e.args[0]
            if err.txn_requires_abort():
                log.warning(
                    "%s: transaction failed (%s): aborting and replaying the batch",
                    self.name,
                    err.str(),
                )
                return None
            raise self.failure(err) from None
        self.in_transaction = False
        if changes:
            if last_offset[0] < 0:
                p.flush(self.cfg.transaction_timeout_ms / 1000)
            if last_offset[0] < 0:
                raise FencedError(
                    f"{self.name}: committed but the changelog offset never came back"
                )
        return last_offset[0]

    def _finish(
        self,
        p: TransactionalProducer,
        partition: int,
        offsets: dict[str, int],
        consumer: GroupConsumer,
    ) -> None:
        """Send the offsets and commit; retry what librdkafka calls retriable (a broker
        stall, a coordinator move) for the transaction timeout or ``startup_timeout_s``,
        whichever is longer, as Kafka Streams retries for ``task.timeout.ms``: a broker
        frozen longer than the transaction timeout does not end the worker. If Kafka aborted
        the transaction meanwhile, the commit fails as abortable and the batch is replayed."""
        timeout = self.cfg.transaction_timeout_ms / 1000
        deadline = time.monotonic() + max(timeout, self.cfg.startup_timeout_s)
        offsets_sent = not offsets
        while True:
            try:
                if not offsets_sent:
                    tps = [TopicPartition(t, partition, o) for t, o in offsets.items()]
                    p.send_offsets_to_transaction(tps, consumer.consumer_group_metadata(), timeout)
                    offsets_sent = True
                p.commit_transaction(timeout)
                return
            except KafkaException as e:
                err = e.args[0]
                if not err.retriable() or time.monotonic() >= deadline:
                    raise
                log.warning("%s: commit not done yet (%s): retrying", self.name, err.str())

    def abort(self) -> None:
        """Abort the open transaction. What librdkafka calls retriable (a broker stall: "retry
        call to resume") is retried for as long as a commit would be (``_finish``), so a
        stalled broker does not end the worker; past that, a one-line broker error."""
        timeout = self.cfg.transaction_timeout_ms / 1000
        deadline = time.monotonic() + max(timeout, self.cfg.startup_timeout_s)
        while True:
            try:
                self._live().abort_transaction(timeout)
                break
            except KafkaException as e:
                err = e.args[0]
                if err.fatal():  # nothing will ever be committed by this producer
                    self.in_transaction = False
                    raise FencedError(f"task {self.name} cannot abort: {err.str()}") from None
                if not err.retriable():
                    raise  # still open: closing tries again
                if time.monotonic() >= deadline:
                    raise BrokerError(
                        f"task {self.name}: could not abort its transaction within "
                        f"{max(timeout, self.cfg.startup_timeout_s):g}s: {err.str()}"
                    ) from None
                log.warning("%s: abort not done yet (%s): retrying", self.name, err.str())
        self.in_transaction = False

    def failure(self, err: KafkaError) -> FencedError | BrokerError:
        """The error to end the task with for a producer error: fenced, or a broker error."""
        if is_fenced(err):
            return FencedError(
                f"task {self.name} was fenced: another worker owns it now ({err.str()})"
            )
        if is_fatal(err):  # a transactional producer's fatal error is, in practice, fencing
            return FencedError(
                f"task {self.name} was fenced or its producer failed for good: "
                f"another worker may own it now ({err.str()})"
            )
        return BrokerError(f"task {self.name}: producer failed: {err.str()}")
