"""A task: one computation on one input partition, with its own store and transactions.

Each task has its own transactional producer whose ``transactional.id`` names the task
(pipeline.computation.partition). Whoever opens a task fences every earlier owner of it
on any broker, without relying on the group coordinator (see docs/architecture.md).

Per batch, in one transaction: the outputs of every record and fired timer, one changelog
record per touched key and timer, one record of the ids first seen in the batch, the
task's input watermark, and the input offsets. Only after the commit are the changes
written to RocksDB.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from hashlib import blake2b

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from rbloom import Bloom

from .. import ids
from ..config import WorkerConfig
from ..errors import BrokerError, FencedError, RecordError, RegistryError, StateTooLargeError
from ..kafka import clients
from ..kafka.writer import ID_HEADER, MAX_RECORD_BYTES, StreamWriter, send
from ..logs import scoped
from ..pipeline import ComputationSpec, Pipeline, TaskInput
from ..record import Key, Record, Timer
from ..state import layout
from ..state.restore import restore
from ..state.store import TaskStore
from ..watermarks import MIN_WATERMARK
from ..watermarks.upstream import Upstream
from .context import EVENT, WALL, KeyState, TaskContext
from .timers import TimerTable

log = logging.getLogger("kwheel.task")
RETRY_BACKOFF_S = 0.2  # between attempts to open a transactional id

ERROR_HEADER = "kwheel.error"
SOURCE_HEADER = "kwheel.source"
MAX_CACHED_KEYS = 200_000
MAX_DECODED_KEYS = 100_000  # raw input keys -> (key, tag), per input
# Timers fired in one transaction at most: 1M windows closing at one watermark in one
# transaction would outlast the transaction timeout and abort, again and again.
MAX_FIRES_PER_TICK = 10_000
MAX_ID_BYTES = 64  # longer foreign ids are hashed down
_WATERMARK_VALUE = struct.Struct(">qq")  # input watermark, timer fire sequence
_DOMAIN_NAMES = {EVENT: "event", WALL: "wall"}
# State made only of these is kept decoded between calls: no call can change it in place.
_IMMUTABLE = frozenset({int, float, str, bytes, bool, type(None)})


def _immutable(d: dict) -> bool:
    for v in d.values():
        if type(v) not in _IMMUTABLE:
            return False
    return True


@dataclass
class TaskCounters:
    consumed: int = 0  # input records read, duplicates and replays after an abort included
    processed: int = 0
    produced: int = 0  # output records sent (dead letters and changelog not included)
    duplicates: int = 0
    late: int = 0
    dead_lettered: int = 0
    timers_fired: int = 0
    commits: int = 0
    aborts: int = 0
    restored: int = 0
    restore_total: int = 0  # changelog offsets the running or last restore had to replay


class _Input:
    """How to read one input topic of the task."""

    __slots__ = ("topic", "stream", "decode_key", "decode_value", "keys", "dedup")

    def __init__(self, ti: TaskInput):
        self.topic = ti.topic
        self.stream = ti.stream.name
        self.decode_key = layout.key_from_tag if ti.repartitioned else ti.stream.key_serde.decode
        self.decode_value = ti.stream.value_serde.decode
        self.keys: dict[bytes, tuple[Key, bytes]] = {}  # raw key -> (key, tag): decoded once
        # Only records from outside can arrive twice (an injector's retry, a re-sent file).
        # Streams the pipeline writes itself, repartition topics included, are written in
        # transactions and read read_committed: they carry each record once, so they skip
        # the seen-id bookkeeping.
        self.dedup = ti.stream.source and not ti.repartitioned

    def key(self, raw: bytes) -> tuple[Key, bytes]:
        hit = self.keys.get(raw)
        if hit is None:
            key = self.decode_key(raw)
            hit = (key, layout.key_tag(key))
            if len(self.keys) >= MAX_DECODED_KEYS:
                self.keys.clear()
            self.keys[raw] = hit
        return hit


class Task:
    def __init__(
        self,
        pipeline: Pipeline,
        spec: ComputationSpec,
        partition: int,
        cfg: WorkerConfig,
        consumer: Consumer,
    ):
        self.pipeline = pipeline
        self.spec = spec
        self.partition = partition
        self.cfg = cfg
        self.consumer = consumer
        self.name = f"{spec.name}[{partition}]"
        self.changelog = pipeline.changelog_topic(spec.name)
        self.inputs = {ti.topic: _Input(ti) for ti in pipeline.task_inputs(spec.name)}
        self.upstream = Upstream(pipeline, spec.name, partition)
        self.counters = TaskCounters()
        self.writer = StreamWriter(pipeline, list(spec.outputs))
        self.ctx = TaskContext(self.writer)
        self.dead_letter = pipeline.streams[spec.dead_letter].topic if spec.dead_letter else None
        self.store = TaskStore(cfg.state_dir / pipeline.name / spec.name / str(partition))
        self.producer: Producer | None = None
        self.incarnation = 0
        self.owner = ""  # the token this opening announced with (watermarks/ownership.py)
        self.renew_needed = False  # aborted: go on with a fresh producer id (renew)
        self.computation = spec.factory()
        self.timers = TimerTable(self.store)
        # watermarks: of the inputs (persisted, monotonic) and the one this task publishes
        self.input_watermark = MIN_WATERMARK
        self.output_watermark = MIN_WATERMARK
        self._fire_seq = 0
        self._watermark_dirty = False
        self.timers_left = False  # the last fire_timers stopped at its cap: tick again soon
        # State in front of RocksDB: committed values, and this batch's changes. A value is
        # kept encoded (each call decodes its own copy) unless it holds only immutable
        # values: then the dict itself is shared, and KeyState copies it on first write.
        # Either way nothing user code keeps or mutates in place can leak into another
        # call, a replay, or the store.
        self._clean: dict[bytes, bytes | dict | None] = {}
        self._dirty: dict[bytes, bytes | dict | None] = {}
        self._pending_ids: dict[bytes, int] = {}
        self._bloom = Bloom(100_000, 0.01)
        self._in_txn = False
        self.txn_began = 0.0  # monotonic time the open transaction began: batch latency
        self._txn_records = 0
        self._txn_first: dict[str, int] = {}  # topic -> first offset of the open transaction
        self._txn_next: dict[str, int] = {}  # topic -> offset after the last one handled
        self.committed_offsets: dict[str, int] = {}  # topic -> next offset, as last committed here
        self._next_batch = 0
        self._id_batches: list[tuple[int, int]] = []  # (batch, newest id timestamp): for GC

    # ---- lifecycle ---------------------------------------------------------------------
    @scoped
    def open(
        self,
        incarnation: int = 1,
        fence_from: int = 0,
        check_owner: Callable[[Task], None] | None = None,
        owner: str = "",
    ) -> None:
        """Fence earlier owners, then bring the store up to the end of the changelog.
        ``check_owner`` runs between the two (and raises if this process lost the task).

        Each incarnation of a task writes with its own transactional id, ``<task>.<n>``,
        and fences the ones before it (``fence_from`` .. ``incarnation - 1``) by opening
        their ids first. A fresh id means a fresh producer id: some brokers (the embedded
        test broker among them) hide a fenced producer's later records from readers that
        were waiting on its aborted transaction, so a successor must not reuse it."""
        self._take_ids(incarnation, fence_from, check_owner, owner)
        started = time.monotonic()
        n = restore(
            self.store,
            clients.reader_config(self.cfg),
            self.changelog,
            self.partition,
            self.cfg.startup_timeout_s,
            progress=self._restoring,
        )
        self.counters.restored = n
        self.counters.restore_total = n
        if n:
            log.info(
                "%s: restored %d changelog records in %.2fs",
                self.name,
                n,
                time.monotonic() - started,
            )
        self._load_store()

    def _take_ids(
        self,
        incarnation: int,
        fence_from: int,
        check_owner: Callable[[Task], None] | None,
        owner: str,
    ) -> None:
        """Open the ids ``fence_from`` .. ``incarnation - 1`` (fencing them), then this
        incarnation's own; then ``check_owner``."""
        base = self.pipeline.transactional_id(self.spec.name, self.partition)
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        for n in range(fence_from, incarnation):
            self._init_transactions(f"{base}.{n}", deadline)
        self.incarnation = incarnation
        self.owner = owner
        self.producer = self._init_transactions(f"{base}.{incarnation}", deadline)
        self.renew_needed = False
        if check_owner is not None:
            check_owner(self)

    @scoped
    def renew(
        self, incarnation: int, check_owner: Callable[[Task], None] | None = None, owner: str = ""
    ) -> None:
        """Go on as a new incarnation after an abort, with a fresh producer id.

        The embedded test broker hides a producer id's records committed after one of its
        transactions aborted from a read_committed reader that was waiting on it: the reader
        moves past them (tests/integration/test_broker_gaps.py). Kafka does not, but a fresh
        id costs one announcement and two InitProducerId calls per abort, which is rare."""
        old = self.producer
        self.producer = None
        if old is not None:
            old.flush(0)
        self._take_ids(incarnation, self.incarnation, check_owner, owner)

    def _init_transactions(self, transactional_id: str, deadline: float) -> Producer:
        """A producer holding ``transactional_id``, whoever held it before fenced.

        A timeout is retried until ``deadline``, and at least once: a process paused in the
        middle of the call (a zombie being resumed) finds its time used up on waking."""
        producer = Producer(clients.transactional_producer_config(self.cfg, transactional_id))
        tries = 0
        while True:
            tries += 1
            try:
                producer.init_transactions(max(1.0, deadline - time.monotonic()))
                return producer
            except KafkaException as e:
                err = e.args[0]
                failed = self._classify(err)
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

    def _load_store(self) -> None:
        """Take up the store as restored: batch numbers, watermark, timers, seen ids; then set
        the computation up. The in-process test driver (kwheel.testing) opens tasks with this
        alone, its producer already in place."""
        self._next_batch = self.store.next_batch
        self._id_batches = list(self.store.id_batches())
        self.input_watermark, self._fire_seq = self._committed_watermark()
        self.ctx.low_watermark = self.input_watermark
        self.timers = TimerTable(self.store)
        self._rebuild_bloom()
        self.computation.setup()

    def _restoring(self, applied: int, total: int) -> None:
        self.counters.restored, self.counters.restore_total = applied, total

    def _rebuild_bloom(self) -> None:
        seen = list(self.store.seen_ids())
        self._bloom = Bloom(max(100_000, 2 * len(seen)), 0.01)
        self._bloom.update(seen)

    @scoped
    def close(self) -> None:
        """Let go of the task: abort what is open, then close the store. A producer that is
        fenced or failed has nothing left to deliver, so its errors end here: closing must
        not crash a worker (it runs in rebalance callbacks)."""
        try:
            if self._in_txn:
                self.abort()
        except Exception as e:
            log.warning("%s: abort on close failed: %s", self.name, e)
            self._discard()
        log.info("%s: closed %s", self.name, json.dumps(asdict(self.counters)))
        if self.producer is not None:
            try:
                self.producer.flush(5)
            except KafkaException as e:
                log.info("%s: producer gone (%s)", self.name, e.args[0].str() if e.args else e)
            self.producer = None
        self.store.close()

    # ---- processing --------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._txn_records

    @property
    def needs_commit(self) -> bool:
        """An open transaction, or a watermark change to record."""
        return self._in_txn or self._watermark_dirty

    def _begin(self) -> None:
        if not self._in_txn:
            try:
                self.producer.begin_transaction()
            except KafkaException as e:
                raise self._producer_failed(e) from None
            self._in_txn = True
            self.txn_began = time.monotonic()

    def _producer_failed(self, e: KafkaException) -> Exception:
        """A producer error outside commit: fenced or fatal means this task is done here."""
        self._discard()
        return self._classify(e.args[0])

    def _classify(self, err: KafkaError) -> Exception:
        """The error to end the task with for a producer error: fenced, or a broker error."""
        if (
            err.code()
            in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)
            or "fenced" in err.str().lower()
        ):
            return FencedError(
                f"task {self.name} was fenced: another worker owns it now ({err.str()})"
            )
        if (
            err.code() == KafkaError._FATAL
        ):  # a transactional producer's fatal error is, in practice, fencing
            return FencedError(
                f"task {self.name} was fenced or its producer failed for good: "
                f"another worker may own it now ({err.str()})"
            )
        return BrokerError(f"task {self.name}: producer failed: {err.str()}")

    @scoped
    def process(self, messages: list[Message]) -> None:
        """Process consumed messages of this task; raise RecordError under the stop policy."""
        self._begin()
        inputs = self.inputs
        bloom = self._bloom
        pending_ids = self._pending_ids
        ctx = self.ctx
        comp = self.computation
        counters = self.counters
        watermark = self.input_watermark
        txn_first = self._txn_first
        txn_next = self._txn_next
        outputs = ctx.outputs
        process_record = comp.process_record
        has_seen = self.store.has_seen
        processed = late = 0
        counters.consumed += len(messages)
        try:
            for m in messages:
                topic = m.topic()
                offset = m.offset()
                if topic not in txn_first:
                    txn_first[topic] = offset
                txn_next[topic] = offset + 1
                inp = inputs[topic]
                headers = m.headers()
                first = headers[0] if headers else None
                if (
                    first is not None
                    and first[0] == ID_HEADER
                    and first[1]
                    and len(first[1]) <= MAX_ID_BYTES
                ):
                    rid = first[1]
                else:
                    rid = _record_id(m)
                dedup = inp.dedup
                if dedup and (rid in pending_ids or (rid in bloom and has_seen(rid))):
                    counters.duplicates += 1
                    continue
                key = None
                mark = len(outputs)
                try:
                    raw_key = m.key()
                    if raw_key is None:
                        raise ValueError("record has no key (keyed inputs need one)")
                    key, tag = inp.key(raw_key)
                    value = inp.decode_value(m.value())
                    ts = m.timestamp()[1]
                    record = Record(key, value, ts, rid, inp.stream, ts < watermark)
                    state = KeyState(self._load(tag))
                    ctx.begin(key, tag, state, rid, ts)
                    process_record(ctx, record)
                    if state.changed or ctx.timer_ops:
                        self._succeeded(tag, state)  # encodes the state: may fail too
                except (
                    RegistryError
                ):  # the registry, not the record, failed: stop, never dead-letter
                    raise
                except Exception as e:  # user code and decoding: the error policy decides
                    del outputs[mark:]
                    where = f"{topic}[{m.partition()}]@{offset}"
                    self._failed(
                        f"failed on key {key!r} at {where}",
                        e,
                        m.key(),
                        m.value(),
                        m.timestamp()[1],
                        rid,
                        where,
                    )
                    if dedup:
                        pending_ids[rid] = m.timestamp()[
                            1
                        ]  # dead-lettered: a re-sent copy is a duplicate
                        bloom.add(rid)
                    continue
                if dedup:
                    pending_ids[rid] = ts
                    bloom.add(rid)
                processed += 1
                if record.late:
                    late += 1
        finally:  # also when a record stops the batch: the counters say what was done
            counters.processed += processed
            counters.late += late
        self._txn_records += len(messages)
        self._send_outputs()

    def _succeeded(self, tag: bytes, state: KeyState) -> None:
        """Make one call's state and timer changes part of the batch (they were held back
        until it returned; its outputs wait in ``ctx.outputs``)."""
        ctx = self.ctx
        if state.changed:
            d = state.snapshot()
            state.release()  # a KeyState kept by user code copies again before writing
            value = (d if _immutable(d) else layout.encode_state(d)) if d else None
            if value is not None and _state_size(tag, value) > MAX_RECORD_BYTES:
                raise StateTooLargeError(
                    f"the state of key {ctx.key!r} would be {_state_size(tag, value, True)} "
                    f"bytes, over the {MAX_RECORD_BYTES}-byte limit of a changelog record"
                )
            self._dirty[tag] = value
        if ctx.timer_ops:
            for tkey, value in ctx.timer_ops:
                self.timers.apply(tkey, value)

    def _send_outputs(self) -> None:
        """Hand the batch's collected outputs to librdkafka."""
        outputs = self.ctx.outputs
        if outputs:
            self.counters.produced += len(outputs)
            try:
                send(self.producer, outputs)
            except KafkaException as e:
                raise self._producer_failed(e) from None
            outputs.clear()

    def _load(self, tag: bytes) -> dict:
        """The key's state: this batch's, else the committed one; shared only when immutable."""
        dirty = self._dirty
        if tag in dirty:
            raw = dirty[tag]
        else:
            clean = self._clean
            if tag in clean:
                raw = clean[tag]
            else:
                raw = self.store.get(layout.STATE + tag)
                if raw is not None:
                    d = layout.decode_state(raw)
                    if _immutable(d):
                        raw = d
                if len(clean) >= MAX_CACHED_KEYS:
                    clean.clear()
                clean[tag] = raw
        if raw is None:
            return {}
        if type(raw) is dict:
            return raw
        return layout.decode_state(raw)

    def _failed(
        self,
        what: str,
        e: Exception,
        key: bytes | None,
        value: bytes | None,
        ts: int,
        rid: bytes,
        where: str,
    ) -> None:
        msg = f"computation {self.spec.name!r} {what}: {type(e).__name__}: {e}"
        if self.dead_letter is None:
            raise RecordError(msg) from e
        headers = [(ID_HEADER, rid), (ERROR_HEADER, msg.encode()), (SOURCE_HEADER, where.encode())]
        try:
            self.producer.produce(self.dead_letter, value, key, timestamp=ts, headers=headers)
        except KafkaException as ke:
            raise self._producer_failed(ke) from None
        self.counters.dead_lettered += 1
        log.warning("%s: dead-lettered: %s", self.name, msg)

    # ---- watermarks and timers ------------------------------------------------------------
    def advance(self, upstream_watermark: int) -> None:
        """Raise the input watermark (never lower it)."""
        if upstream_watermark > self.input_watermark:
            self.input_watermark = upstream_watermark
            self.ctx.low_watermark = upstream_watermark
            self._watermark_dirty = True

    @scoped
    def fire_timers(self, wall_now_ms: int) -> int:
        """Fire due timers in time order, MAX_FIRES_PER_TICK at most: event timers up to the
        input watermark, wall timers up to the clock. Returns how many fired.

        When event timers are left due, the input watermark steps back to the first of them
        (never below the committed one): every timer before it has fired, so records read
        until the next tick are late only if they are behind it, and the next tick goes on
        from there. A transaction never holds more than the cap, whatever closes at once."""
        fired = 0
        self.timers_left = False
        for domain, limit in ((EVENT, self.input_watermark), (WALL, wall_now_ms)):
            while fired < MAX_FIRES_PER_TICK:
                due = self.timers.due(domain, limit, MAX_FIRES_PER_TICK - fired)
                if not due:
                    break
                for ts, tkey in due:
                    value = self.timers.value(tkey)
                    if value is None or layout.decode_timer(value) != (ts, domain):
                        continue  # deleted or moved by an earlier timer of this round
                    self._fire(tkey, ts, domain)
                    fired += 1
            if fired >= MAX_FIRES_PER_TICK:
                left = self.timers.due(domain, limit, 1)
                if left:
                    self.timers_left = True
                    if domain == EVENT:
                        self._hold_watermark(left[0][0])
        self._send_outputs()
        return fired

    def _committed_watermark(self) -> tuple[int, int]:
        """(input watermark, timer fire sequence) as last committed."""
        raw = self.store.get(layout.WATERMARK)
        return _WATERMARK_VALUE.unpack(raw) if raw is not None else (MIN_WATERMARK, 0)

    def _hold_watermark(self, ts: int) -> None:
        """Keep the input watermark at ``ts``, where due timers are still waiting to fire."""
        held = max(ts, self._committed_watermark()[0])
        if held < self.input_watermark:
            self.input_watermark = held
            self.ctx.low_watermark = held

    def _fire(self, tkey: bytes, ts: int, domain: bytes) -> None:
        self._begin()
        keytag, tag = layout.split_timer_key(tkey)
        key: Key = layout.key_from_tag(keytag)
        self.timers.apply(tkey, None)  # fired: gone, unless the call sets it again
        self._fire_seq += 1
        self._watermark_dirty = True
        rid = blake2b(tkey + self._fire_seq.to_bytes(8, "big"), digest_size=ids.ID_BYTES).digest()
        state = KeyState(self._load(keytag))
        self.ctx.begin(key, keytag, state, rid, ts)
        mark = len(self.ctx.outputs)
        try:
            self.computation.process_timer(self.ctx, Timer(key, tag, ts, _DOMAIN_NAMES[domain]))
            self._succeeded(keytag, state)  # encodes the state: may fail too
        except RegistryError:  # the registry, not the timer, failed: stop, never dead-letter
            raise
        except Exception as e:
            del self.ctx.outputs[mark:]
            what = f"failed in timer {tag!r} ({_DOMAIN_NAMES[domain]} {ts}) of key {key!r}"
            body = json.dumps(
                {"timer": tag, "timestamp": ts, "domain": _DOMAIN_NAMES[domain]}
            ).encode()
            self._failed(what, e, keytag[1:], body, ts, rid, f"{self.name} timer {tag!r}")
            return
        self.counters.timers_fired += 1

    def compute_output_watermark(self) -> int:
        """min(input watermark, earliest pending event timer), never lower than before."""
        w = min(self.input_watermark, self.timers.earliest(EVENT))
        if w > self.output_watermark:
            self.output_watermark = w
        return self.output_watermark

    # ---- committing --------------------------------------------------------------------
    @scoped
    def commit(self) -> None:
        """Commit the open transaction and then apply its changes to RocksDB."""
        if not self._in_txn and not self._watermark_dirty:
            return
        if self._in_txn and self._expired():
            return
        self._begin()
        self._send_outputs()
        encode = layout.encode_state
        changes: list[tuple[bytes, bytes | None]] = [
            (layout.STATE + tag, encode(v) if type(v) is dict else v)
            for tag, v in self._dirty.items()
        ]
        changes.extend(self.timers.changes.items())
        next_batch = self._next_batch
        new_batch = None
        if self._pending_ids:
            changes.append(
                (layout.id_batch_key(next_batch), layout.encode_id_batch(self._pending_ids))
            )
            new_batch = (next_batch, max(self._pending_ids.values()))
            next_batch += 1
        # forget seen ids the watermark has left far behind: a copy now would be very late
        horizon = self.input_watermark - self.cfg.dedup_horizon_ms
        expired = [b for b, ts in self._id_batches if ts < horizon]
        changes.extend((layout.id_batch_key(b), None) for b in expired)
        if self._watermark_dirty:
            changes.append(
                (layout.WATERMARK, _WATERMARK_VALUE.pack(self.input_watermark, self._fire_seq))
            )
        last_offset = [-1]

        def delivered(err, msg):
            if err is None:
                last_offset[0] = msg.offset()

        p = self.producer
        try:
            for i, (k, v) in enumerate(changes):
                while True:
                    try:
                        if i == len(changes) - 1:
                            p.produce(
                                self.changelog,
                                v,
                                k,
                                partition=self.partition,
                                on_delivery=delivered,
                            )
                        else:
                            p.produce(self.changelog, v, k, partition=self.partition)
                        break
                    except BufferError:
                        p.poll(0.05)
            self._finish(p)
        except KafkaException as e:
            self._commit_failed(e)
            return
        if changes:
            if last_offset[0] < 0:
                p.flush(self.cfg.transaction_timeout_ms / 1000)
            if last_offset[0] < 0:
                raise FencedError(
                    f"{self.name}: committed but the changelog offset never came back"
                )
            self.store.apply(changes, last_offset[0], next_batch, self._pending_ids)
        self._next_batch = next_batch
        if expired:
            gone = set(expired)
            self._id_batches = [e for e in self._id_batches if e[0] not in gone]
        if new_batch is not None:
            self._id_batches.append(new_batch)
        self._clean.update(self._dirty)
        self.committed_offsets.update(self._txn_next)
        self.timers.committed()
        self._watermark_dirty = False
        self.counters.commits += 1
        self._end_txn()

    def _expired(self) -> bool:
        """A transaction open longer than its timeout is aborted, never committed: Kafka's
        coordinator has aborted it already (or will, mid-commit), so abort it here too and
        replay the batch from its first offset. Brokers that never time out a transaction
        (the embedded one) get the same behaviour."""
        took = time.monotonic() - self.txn_began
        limit = self.cfg.transaction_timeout_ms / 1000
        if took <= limit:
            return False
        log.warning(
            "%s: batch of %d records took %.1fs, longer than transaction_timeout_ms=%d: "
            "aborting it and retrying from %s (a user function is too slow for the timeout?)",
            self.name,
            self._txn_records,
            took,
            self.cfg.transaction_timeout_ms,
            self._txn_first,
        )
        self.abort()
        return True

    def _finish(self, p: Producer) -> None:
        """Send the offsets and commit; retry what librdkafka calls retriable (a broker
        stall, a coordinator move) for the transaction timeout or ``startup_timeout_s``,
        whichever is longer, as Kafka Streams retries for ``task.timeout.ms``: a broker
        frozen longer than the transaction timeout does not end the worker. If Kafka aborted
        the transaction meanwhile, the commit fails as abortable and the batch is replayed."""
        timeout = self.cfg.transaction_timeout_ms / 1000
        deadline = time.monotonic() + max(timeout, self.cfg.startup_timeout_s)
        offsets_sent = not self._txn_next
        while True:
            try:
                if not offsets_sent:
                    offsets = [
                        TopicPartition(t, self.partition, o) for t, o in self._txn_next.items()
                    ]
                    p.send_offsets_to_transaction(
                        offsets, self.consumer.consumer_group_metadata(), timeout
                    )
                    offsets_sent = True
                p.commit_transaction(timeout)
                return
            except KafkaException as e:
                err = e.args[0]
                if not err.retriable() or time.monotonic() >= deadline:
                    raise
                log.warning("%s: commit not done yet (%s): retrying", self.name, err.str())

    def _commit_failed(self, e: KafkaException) -> None:
        err = e.args[0]
        if err.txn_requires_abort():
            log.warning(
                "%s: transaction failed (%s): aborting and replaying the batch",
                self.name,
                err.str(),
            )
            self.abort()
            return
        raise self._producer_failed(e) from None

    @scoped
    def abort(self) -> None:
        """Abort the open transaction and rewind the consumer to replay its records."""
        if not self._in_txn:
            return
        self.counters.aborts += 1
        try:
            self.producer.abort_transaction(self.cfg.transaction_timeout_ms / 1000)
        except KafkaException as e:
            if e.args[0].fatal():
                self._discard()
                raise FencedError(f"task {self.name} cannot abort: {e.args[0].str()}") from None
            raise
        rewind = [TopicPartition(t, self.partition, o) for t, o in self._txn_first.items()]
        self._discard()
        self.renew_needed = True
        for tp in rewind:
            try:
                self.consumer.seek(tp)
            except KafkaException as e:  # going on would skip the aborted records
                raise BrokerError(
                    f"task {self.name}: cannot rewind {tp.topic}[{tp.partition}] to {tp.offset} "
                    f"after an abort: {e}"
                ) from None

    def _discard(self) -> None:
        """Forget the batch: state, timers, the fire sequence and the input watermark go back
        to the store's. The input watermark may have been raised from positions that include
        the batch's records; kept, it would make their replay late."""
        self.timers.discard()
        self.input_watermark, self._fire_seq = self._committed_watermark()
        self.ctx.low_watermark = self.input_watermark
        self.upstream.rewound()
        self._watermark_dirty = False
        self.ctx.outputs.clear()  # not yet handed to librdkafka: never sent
        self.ctx.timer_ops.clear()
        self._end_txn()

    def _end_txn(self) -> None:
        self._dirty = {}
        self._pending_ids = {}
        self._txn_first = {}
        self._txn_next = {}
        self._txn_records = 0
        self._in_txn = False

    def stats(self) -> dict[str, int]:
        out = asdict(self.counters)
        out["pending_timers"] = self.timers.pending
        return out


def _state_size(tag: bytes, value: bytes | dict, exact: bool = False) -> int:
    """A changelog record's size for one key's state. Encoded values are measured; a dict
    kept decoded (immutable values only) is estimated from above, and encoded only when
    the estimate comes near the limit, so the usual small state costs no encoding."""
    size = len(tag) + 64  # key and record overhead
    if type(value) is bytes:
        return size + len(value)
    if not exact:
        estimate = size  # pickle: UTF-8 text takes up to 4 bytes a character
        for item in value.items():
            for x in item:
                t = type(x)
                if t is str:
                    estimate += 4 * len(x) + 8
                elif t is bytes:
                    estimate += len(x) + 8
                elif t is int:
                    estimate += x.bit_length() // 8 + 16
                elif t in (float, bool, type(None)):
                    estimate += 16
                else:  # a tuple key or the like: measure
                    return size + len(layout.encode_state(value))
        if estimate <= MAX_RECORD_BYTES // 2:
            return estimate
    return size + len(layout.encode_state(value))


def _record_id(m: Message) -> bytes:
    """The record's id header, else an id derived from its log position."""
    headers = m.headers()
    if headers:
        for name, value in headers:
            if name == ID_HEADER and value:
                return (
                    value
                    if len(value) <= MAX_ID_BYTES
                    else blake2b(value, digest_size=ids.ID_BYTES).digest()
                )
    return ids.from_position(m.topic(), m.partition(), m.offset())
