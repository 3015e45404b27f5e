"""A task: one computation on one input partition, with its own store and transactions.

Each task has its own transactional producer whose ``transactional.id`` names the task
(pipeline.computation.partition). Whoever opens a task fences every earlier owner of it
on any broker, without relying on the group coordinator (see docs/architecture.md).

Per batch, in one transaction: the outputs of every record, one changelog record per
touched key, one record of the ids first seen in the batch, and the input offsets.
Only after the commit are the changes written to RocksDB.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from rbloom import Bloom

from .. import ids
from ..config import WorkerConfig
from ..errors import FencedError, RecordError
from ..kafka import clients
from ..kafka.writer import ID_HEADER, StreamWriter, send
from ..pipeline import ComputationSpec, Pipeline, TaskInput
from ..record import Record
from ..state import layout
from ..state.restore import restore
from ..state.store import TaskStore
from .context import KeyState, TaskContext

log = logging.getLogger("kwheel.task")

ERROR_HEADER = "kwheel.error"
SOURCE_HEADER = "kwheel.source"
MAX_CACHED_KEYS = 200_000


@dataclass
class TaskCounters:
    processed: int = 0
    duplicates: int = 0
    late: int = 0
    dead_lettered: int = 0
    commits: int = 0
    restored: int = 0


class _Input:
    """How to read one input topic of the task."""

    __slots__ = ("topic", "stream", "decode_key", "decode_value")

    def __init__(self, ti: TaskInput):
        self.topic = ti.topic
        self.stream = ti.stream.name
        self.decode_key = layout.key_from_tag if ti.repartitioned else ti.stream.key_serde.decode
        self.decode_value = ti.stream.value_serde.decode


class Task:
    def __init__(self, pipeline: Pipeline, spec: ComputationSpec, partition: int, cfg: WorkerConfig, consumer: Consumer):
        self.pipeline = pipeline
        self.spec = spec
        self.partition = partition
        self.cfg = cfg
        self.consumer = consumer
        self.name = f"{spec.name}[{partition}]"
        self.changelog = pipeline.changelog_topic(spec.name)
        self.inputs = {ti.topic: _Input(ti) for ti in pipeline.task_inputs(spec.name)}
        self.counters = TaskCounters()
        outputs = list(spec.outputs)
        self.writer = StreamWriter(pipeline, outputs)
        self.ctx = TaskContext(self.writer)
        self.dead_letter = pipeline.streams[spec.dead_letter].topic if spec.dead_letter else None
        self.store = TaskStore(cfg.state_dir / pipeline.name / spec.name / str(partition))
        self.producer: Producer | None = None
        self.computation = spec.factory()
        # in-memory state in front of RocksDB: committed values, and this batch's changes
        self._clean: dict[bytes, dict] = {}
        self._dirty: dict[bytes, dict] = {}
        self._pending_ids: dict[bytes, int] = {}
        self._bloom = Bloom(100_000, 0.01)
        self._in_txn = False
        self._txn_records = 0
        self._txn_first: dict[str, int] = {}  # topic -> first offset of the open transaction
        self._txn_next: dict[str, int] = {}  # topic -> offset after the last one handled
        self._next_batch = 0

    # ---- lifecycle ---------------------------------------------------------------------
    def open(self) -> None:
        """Fence earlier owners, then bring the store up to the end of the changelog."""
        tid = self.pipeline.transactional_id(self.spec.name, self.partition)
        self.producer = Producer(clients.transactional_producer_config(self.cfg, tid))
        self.producer.init_transactions(self.cfg.startup_timeout_s)
        started = time.monotonic()
        n = restore(self.store, clients.reader_config(self.cfg), self.changelog, self.partition, self.cfg.startup_timeout_s)
        self.counters.restored += n
        if n:
            log.info("%s: restored %d changelog records in %.2fs", self.name, n, time.monotonic() - started)
        self._next_batch = self.store.next_batch
        self._rebuild_bloom()
        self.computation.setup()

    def _rebuild_bloom(self) -> None:
        seen = list(self.store.seen_ids())
        self._bloom = Bloom(max(100_000, 2 * len(seen)), 0.01)
        self._bloom.update(seen)
        self._bloom_count = len(seen)

    def close(self) -> None:
        if self._in_txn:
            self.abort()
        log.info("%s: closed %s", self.name, json.dumps(asdict(self.counters)))
        if self.producer is not None:
            self.producer.flush(5)
            self.producer = None
        self.store.close()

    # ---- processing --------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._txn_records

    def process(self, messages: list[Message]) -> None:
        """Process consumed messages of this task; raise RecordError under the stop policy."""
        if not self._in_txn:
            self.producer.begin_transaction()
            self._in_txn = True
        inputs = self.inputs
        bloom = self._bloom
        pending_ids = self._pending_ids
        ctx = self.ctx
        comp = self.computation
        counters = self.counters
        for m in messages:
            topic = m.topic()
            offset = m.offset()
            if topic not in self._txn_first:
                self._txn_first[topic] = offset
            self._txn_next[topic] = offset + 1
            self._txn_records += 1
            inp = inputs[topic]
            rid = _record_id(m)
            if rid in pending_ids or (rid in bloom and self.store.has_seen(rid)):
                counters.duplicates += 1
                continue
            key = None
            try:
                raw_key = m.key()
                if raw_key is None:
                    raise ValueError("record has no key (keyed inputs need one)")
                key = inp.decode_key(raw_key)
                value = inp.decode_value(m.value())
                ts = m.timestamp()[1]
                record = Record(key, value, ts, rid, inp.stream)
                tag = layout.key_tag(key)
                state = KeyState(self._load(tag))
                ctx.begin(key, state, rid, ts)
                comp.process_record(ctx, record)
            except Exception as e:  # user code and decoding: the error policy decides
                self._record_failed(m, inp, key, e)
                continue
            if state.changed:
                self._dirty[tag] = state.snapshot()
            if ctx.outputs:
                send(self.producer, ctx.outputs)
            pending_ids[rid] = ts
            bloom.add(rid)
            counters.processed += 1

    def _load(self, tag: bytes) -> dict:
        d = self._dirty.get(tag)
        if d is not None:
            return d
        d = self._clean.get(tag)
        if d is not None:
            return d
        raw = self.store.get(layout.STATE + tag)
        d = layout.decode_state(raw) if raw is not None else {}
        if len(self._clean) >= MAX_CACHED_KEYS:
            self._clean.clear()
        self._clean[tag] = d
        return d

    def _record_failed(self, m: Message, inp: _Input, key: object, e: Exception) -> None:
        where = f"{m.topic()}[{m.partition()}]@{m.offset()}"
        msg = (
            f"computation {self.spec.name!r} failed on key {key!r} at {where}: "
            f"{type(e).__name__}: {e}"
        )
        if self.dead_letter is None:
            raise RecordError(msg) from e
        headers = [(ID_HEADER, _record_id(m)), (ERROR_HEADER, msg.encode()), (SOURCE_HEADER, where.encode())]
        self.producer.produce(self.dead_letter, m.value(), m.key(), timestamp=m.timestamp()[1], headers=headers)
        self.counters.dead_lettered += 1
        log.warning("%s: dead-lettered: %s", self.name, msg)

    # ---- committing --------------------------------------------------------------------
    def commit(self) -> None:
        """Commit the open transaction and then apply its changes to RocksDB."""
        if not self._in_txn:
            return
        changes: list[tuple[bytes, bytes | None]] = [
            (layout.STATE + tag, layout.encode_state(d) if d else None) for tag, d in self._dirty.items()
        ]
        next_batch = self._next_batch
        if self._pending_ids:
            changes.append((layout.id_batch_key(next_batch), layout.encode_id_batch(self._pending_ids)))
            next_batch += 1
        last_offset = [-1]

        def delivered(err, msg):
            if err is None:
                last_offset[0] = msg.offset()

        p = self.producer
        for i, (k, v) in enumerate(changes):
            while True:
                try:
                    if i == len(changes) - 1:
                        p.produce(self.changelog, v, k, partition=self.partition, on_delivery=delivered)
                    else:
                        p.produce(self.changelog, v, k, partition=self.partition)
                    break
                except BufferError:
                    p.poll(0.05)
        try:
            if self._txn_next:
                offsets = [TopicPartition(t, self.partition, o) for t, o in self._txn_next.items()]
                p.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), self.cfg.transaction_timeout_ms / 1000)
            p.commit_transaction(self.cfg.transaction_timeout_ms / 1000)
        except KafkaException as e:
            self._commit_failed(e)
            return
        if changes:
            if last_offset[0] < 0:
                p.flush(self.cfg.transaction_timeout_ms / 1000)
            if last_offset[0] < 0:
                raise FencedError(f"{self.name}: committed but the changelog offset never came back")
            self.store.apply(changes, last_offset[0], next_batch)
        self._next_batch = next_batch
        for tag, d in self._dirty.items():
            self._clean[tag] = d
        self.counters.commits += 1
        self._end_txn()

    def _commit_failed(self, e: KafkaException) -> None:
        err = e.args[0]
        if err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH):
            self._discard()
            raise FencedError(f"task {self.name} was fenced: another worker owns it now ({err.str()})") from None
        log.warning("%s: transaction failed (%s): aborting and replaying the batch", self.name, err.str())
        self.abort()

    def abort(self) -> None:
        """Abort the open transaction and rewind the consumer to replay its records."""
        if not self._in_txn:
            return
        try:
            self.producer.abort_transaction(self.cfg.transaction_timeout_ms / 1000)
        except KafkaException as e:
            if e.args[0].fatal():
                self._discard()
                raise FencedError(f"task {self.name} cannot abort: {e.args[0].str()}") from None
            raise
        rewind = [TopicPartition(t, self.partition, o) for t, o in self._txn_first.items()]
        self._discard()
        for tp in rewind:
            try:
                self.consumer.seek(tp)
            except KafkaException as e:
                log.warning("%s: cannot rewind %s: %s", self.name, tp, e)

    def _discard(self) -> None:
        self._dirty.clear()
        self._end_txn()

    def _end_txn(self) -> None:
        self._dirty = {}
        self._pending_ids = {}
        self._txn_first = {}
        self._txn_next = {}
        self._txn_records = 0
        self._in_txn = False


def _record_id(m: Message) -> bytes:
    headers = m.headers()
    if headers:
        for name, value in headers:
            if name == ID_HEADER:
                return value
    return ids.from_position(m.topic(), m.partition(), m.offset())

