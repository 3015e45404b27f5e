"""A task: one computation on one input partition, with its own store and transactions.

Per batch, in one transaction: the outputs of every record and fired timer, one changelog
record per touched key and timer, one record of the ids first seen in the batch, the
task's input watermark, and the input offsets. Only after the commit are the changes
written to RocksDB. The parts live next door: the transactional producer and its fencing
(transactions.py), seen ids (dedup.py), the state cache (state_cache.py), timers
(timers.py), reading inputs (inputs.py).

A task's life (``Task.state``: created, restoring, running, suspended, closed) and its
allowed moves are drawn in lifecycle.py. ``open`` is fence + restore + start.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

from confluent_kafka import Consumer, KafkaException, TopicPartition

from ..config import WorkerConfig
from ..errors import BrokerError, FencedError, KwheelError
from ..kafka import clients
from ..kafka.clients import ConsumedMessage
from ..kafka.protocols import GroupConsumer, TransactionalProducer
from ..kafka.writer import StreamWriter
from ..logs import scoped
from ..pipeline import ComputationSpec, Pipeline
from ..record import TimeDomain
from ..state import layout
from ..state.restore import ChangelogRestore
from ..state.store import TaskStore
from ..watermarks.upstream import Upstream
from . import stats_file
from .calls import Batch, Calls
from .context import TaskContext
from .dedup import IdChanges, SeenIds
from .inputs import InputReader
from .lifecycle import TaskCounters, TaskState, check_move
from .state_cache import StateCache
from .task_watermarks import TaskWatermarks
from .timers import TimerTable
from .transactions import ProducerFactory, TaskProducer

log = logging.getLogger("kwheel.task")

# Timers fired in one transaction at most: 1M windows closing at one watermark in one
# transaction would outlast the transaction timeout and abort, again and again.
MAX_FIRES_PER_TICK = 10_000
EVENT, WALL = TimeDomain.EVENT, TimeDomain.WALL


CheckOwner = Callable[["Task"], None]


class Task:
    def __init__(
        self,
        pipeline: Pipeline,
        spec: ComputationSpec,
        partition: int,
        cfg: WorkerConfig,
        consumer: GroupConsumer,
        make_producer: ProducerFactory | None = None,
    ):
        self.pipeline = pipeline
        self.spec = spec
        self.partition = partition
        self.cfg = cfg
        self.consumer = consumer
        self.name = f"{spec.name}[{partition}]"
        self.state = TaskState.CREATED
        self.changelog = pipeline.changelog_topic(spec.name)
        self.inputs = {ti.topic: InputReader(ti) for ti in pipeline.task_inputs(spec.name)}
        self.upstream = Upstream(pipeline, spec.name, partition)
        self.counters = TaskCounters()
        self.writer = StreamWriter(pipeline, list(spec.outputs))
        self.ctx = TaskContext(self.writer)
        self.dead_letter = pipeline.streams[spec.dead_letter].topic if spec.dead_letter else None
        self.store = TaskStore(cfg.state_dir / pipeline.name / spec.name / str(partition))
        self.txn = TaskProducer(self.name, cfg, make_producer)
        self.incarnation = 0
        self.owner = ""  # the token this opening announced with (watermarks/ownership.py)
        self.computation = spec.factory()
        self.timers = TimerTable(self.store)
        self.cache = StateCache(self.store)
        self.seen = SeenIds(self.store)
        self.watermarks = TaskWatermarks(self.store, self.ctx)
        self.timers_left = False  # the last fire_timers stopped at its cap: tick again soon
        self.batch = Batch()
        self.calls = Calls(
            self.name,
            spec.name,
            self.computation,
            self.ctx,
            self.cache,
            self.timers,
            self.seen,
            self.inputs,
            self.batch,
            self.counters,
            self.txn,
            self.dead_letter,
            self._guard,
        )
        self.committed_offsets: dict[str, int] = {}  # topic -> next offset, as last committed here
        self._restore: ChangelogRestore | None = None  # between begin_restore and start
        # records a batch takes at most: cfg.batch_size, less for a while after a batch
        # outlasted the transaction timeout (_expired)
        self.batch_limit = cfg.batch_size
        self.fire_limit = MAX_FIRES_PER_TICK  # timers one transaction fires at most, likewise
        self._fired_at_begin = 0  # counters.timers_fired when the open transaction began
        self._restore_started = 0.0

    def _move(self, to: TaskState) -> None:
        self.state = check_move(self.name, self.state, to)

    # ---- lifecycle ---------------------------------------------------------------------
    @scoped
    def open(
        self,
        incarnation: int = 1,
        fence_from: int = 0,
        check_owner: CheckOwner | None = None,
        owner: str = "",
    ) -> None:
        """Fence earlier owners, bring the store up to the end of the changelog, start."""
        self.fence(incarnation, fence_from, check_owner, owner)
        self.restore()
        self.start()

    def fence(
        self,
        incarnation: int = 1,
        fence_from: int = 0,
        check_owner: CheckOwner | None = None,
        owner: str = "",
    ) -> None:
        """Open this incarnation's transactional id, fencing ``fence_from`` ..
        ``incarnation - 1`` first; then ``check_owner`` (it raises if this process lost
        the task meanwhile). After this the input offsets committed are final.

        A fresh id means a fresh producer id: some brokers (the embedded test broker among
        them) hide a fenced producer's later records from readers that were waiting on its
        aborted transaction, so a successor must not reuse it."""
        self._move(TaskState.RESTORING)
        self._take_ids(incarnation, fence_from, check_owner, owner)

    def adopt(self, producer: TransactionalProducer, incarnation: int, owner: str = "") -> None:
        """``fence`` with a producer the caller opened this incarnation's id with (and
        fenced the earlier ones): the watermark protocol's model test does its own
        opening, to interleave the steps of racing openings."""
        self._move(TaskState.RESTORING)
        self.txn.producer = producer
        self.incarnation, self.owner = incarnation, owner

    def _take_ids(
        self, incarnation: int, fence_from: int, check_owner: CheckOwner | None, owner: str
    ) -> None:
        base = self.pipeline.transactional_id(self.spec.name, self.partition)
        self.txn.take(base, incarnation, fence_from)
        self.incarnation = incarnation
        self.owner = owner
        if check_owner is not None:
            check_owner(self)

    def restore(self) -> None:
        """Bring the store up to the end of the changelog partition, at once."""
        reader = Consumer(clients.reader_config(self.cfg))
        try:
            self.begin_restore(reader)
            while not self.restore_step(1.0):
                pass
        finally:
            if self._restore is not None:
                self._restore.close()
            reader.close()

    def begin_restore(self, reader: Consumer) -> None:
        """Find what to replay; ``restore_step`` then replays it a slice at a time (how a
        worker restores between polls, runner.py). ``reader``: a group-less
        read_committed consumer (clients.reader_config), used by one restore at a time."""
        if self.state is not TaskState.RESTORING or self._restore is not None:
            raise KwheelError(f"task {self.name}: restore while {self.state.value}")
        self._restore_started = time.monotonic()
        self._restore = ChangelogRestore(
            self.store,
            reader,
            self.changelog,
            self.partition,
            self.cfg.startup_timeout_s,
            progress=self._restoring,
        )
        self._restore.begin()
        self.counters.restore_total = self._restore.total

    def restore_step(self, budget_s: float) -> bool:
        """Replay for about ``budget_s`` seconds; True once the store is up to date."""
        steps = self._restore
        if steps is None:
            raise KwheelError(f"task {self.name}: restore step before begin_restore")
        if not steps.step(budget_s):
            return False
        n = self.counters.restored = self.counters.restore_total = steps.applied
        waited = time.monotonic() - self._restore_started - steps.seconds
        if n:
            log.info(
                "%s: restored %d changelog records in %.2fs (after %.2fs waiting for its turn)",
                self.name,
                n,
                steps.seconds,
                waited,
            )
        stats_file.write("restored", self, seconds=round(steps.seconds, 4), waited=round(waited, 4))
        return True

    @property
    def restore_remaining(self) -> int:
        """Changelog offsets still to replay before this task can start."""
        steps = self._restore
        return 0 if steps is None or self.state is not TaskState.RESTORING else steps.remaining

    def _restoring(self, applied: int, total: int) -> None:
        self.counters.restored, self.counters.restore_total = applied, total

    def start(self) -> None:
        """Take up the store as restored (watermark, timers, seen ids), set the computation
        up and start running."""
        if self._restore is not None and not self._restore.done:
            raise KwheelError(f"task {self.name}: start before its restore finished")
        self._restore = None
        self._move(TaskState.RUNNING)
        self.seen.load()
        self.watermarks.reset()
        self.timers.reload()
        self.computation.setup()

    @scoped
    def renew(
        self, incarnation: int, check_owner: CheckOwner | None = None, owner: str = ""
    ) -> None:
        """Go on as a new incarnation after an abort, with a fresh producer id.

        The embedded test broker hides a producer id's records committed after one of its
        transactions aborted from a read_committed reader that was waiting on it: the reader
        moves past them (tests/integration/test_broker_gaps.py). Kafka does not, but a fresh
        id costs one announcement and two InitProducerId calls per abort, which is rare."""
        if self.state is not TaskState.SUSPENDED:
            raise KwheelError(f"task {self.name}: renew while {self.state.value}")
        self._take_ids(incarnation, self.incarnation, check_owner, owner)
        self._move(TaskState.RUNNING)

    @scoped
    def close(self) -> None:
        """Let go of the task: abort what is open, then close the store. Errors of a fenced
        or failed producer end here: closing must not crash a worker (it runs in rebalance
        callbacks)."""
        if self.state is TaskState.CLOSED:
            return
        try:
            if self.txn.in_transaction:
                self.abort()
        except Exception as e:
            log.warning("%s: abort on close failed: %s", self.name, e)
            self._discard()
        log.info("%s: closed %s", self.name, json.dumps(asdict(self.counters)))
        stats_file.write("closed", self)
        self.txn.let_go(5)
        self.state = TaskState.CLOSED
        if self._restore is not None:
            self._restore.close()  # let go mid-restore: what it applied stays in the store
        self.store.close()

    # ---- processing --------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self.batch.records

    @property
    def needs_commit(self) -> bool:
        """An open transaction, or a watermark change to record."""
        return self.txn.in_transaction or self.watermarks.dirty

    def _require_running(self) -> None:
        if self.state is not TaskState.RUNNING:
            raise KwheelError(f"task {self.name}: cannot process while {self.state.value}")

    def _begin(self) -> None:
        self._require_running()
        if not self.txn.in_transaction:
            self._fired_at_begin = self.counters.timers_fired
            self._guard(self.txn.begin)

    def _guard(self, call: Callable[[], None]) -> None:
        """Run a producer call; if the producer cannot go on, the batch is forgotten and
        the task waits for renew or close."""
        try:
            call()
        except (FencedError, BrokerError):
            self._discard()
            self.state = TaskState.SUSPENDED
            raise

    @scoped
    def process(self, messages: Sequence[ConsumedMessage]) -> None:
        """Process consumed messages of this task; raise RecordError under the stop policy."""
        self._begin()
        self.calls.records(messages, self.watermarks.input)

    # ---- watermarks and timers ------------------------------------------------------------
    @property
    def input_watermark(self) -> int:
        return self.watermarks.input

    @property
    def output_watermark(self) -> int:
        return self.watermarks.output

    def advance(self, upstream_watermark: int) -> None:
        """Raise the input watermark (never lower it)."""
        self.watermarks.advance(upstream_watermark)

    @scoped
    def fire_timers(self, wall_now_ms: int) -> int:
        """Fire due timers in time order, MAX_FIRES_PER_TICK at most: event timers up to the
        input watermark, wall timers up to the clock. Returns how many fired.

        When event timers are left due, the input watermark steps back to the first of them
        (never below the committed one): every timer before it has fired, so records read
        until the next tick are late only if they are behind it, and the next tick goes on
        from there. A transaction never holds more than the cap, whatever closes at once."""
        self._require_running()
        fired, cap = 0, self.fire_limit
        self.timers_left = False
        for domain, limit in ((EVENT, self.watermarks.input), (WALL, wall_now_ms)):
            while fired < cap:
                due = self.timers.due(domain, limit, cap - fired)
                if not due:
                    break
                for ts, tkey in due:
                    value = self.timers.value(tkey)
                    if value is None or layout.decode_timer(value) != (ts, domain):
                        continue  # deleted or moved by an earlier timer of this round
                    self._begin()
                    self.calls.timer(tkey, ts, domain, self.watermarks.next_fire())
                    fired += 1
            if fired >= cap:
                left = self.timers.due(domain, limit, 1)
                if left:
                    self.timers_left = True
                    if domain == EVENT:
                        self.watermarks.hold(left[0][0])
        self.calls.send_outputs()
        return fired

    def compute_output_watermark(self) -> int:
        """min(input watermark, earliest pending event timer), never lower than before."""
        return self.watermarks.output_at(self.timers.earliest(EVENT))

    # ---- committing --------------------------------------------------------------------
    @scoped
    def commit(self) -> None:
        """Commit the open batch: prepare its changes, commit them in the transaction with
        the input offsets, then apply them to RocksDB."""
        if not self.needs_commit:
            return
        if self.txn.in_transaction and self._expired():
            return
        self._begin()
        self.calls.send_outputs()
        changes, ids = self._prepare()
        try:
            last_offset = self.txn.commit(
                self.changelog, self.partition, changes, self.batch.next, self.consumer
            )
        except (FencedError, BrokerError):
            self._discard()
            self.state = TaskState.SUSPENDED
            raise
        if last_offset is None:
            self.abort()
            return
        self._apply(changes, last_offset, ids)

    def _prepare(self) -> tuple[list[tuple[bytes, bytes | None]], IdChanges]:
        """The batch's changelog records: state, timers, seen ids, the watermark."""
        changes = self.cache.changes()
        changes.extend(self.timers.changes.items())
        # forget seen ids the watermark has left far behind: a copy now would be very late
        ids = self.seen.changes(self.watermarks.input - self.cfg.dedup_horizon_ms)
        changes.extend(ids.entries)
        watermark = self.watermarks.change()
        if watermark is not None:
            changes.append(watermark)
        return changes, ids

    def _apply(
        self, changes: list[tuple[bytes, bytes | None]], last_offset: int, ids: IdChanges
    ) -> None:
        """The transaction committed: write its changes to RocksDB and start afresh."""
        if changes:
            self.store.apply(changes, last_offset, ids.next_batch, self.seen.pending)
        self.seen.committed(ids)
        self.cache.committed()
        self.committed_offsets.update(self.batch.next)
        self.timers.committed()
        self.watermarks.dirty = False
        self.counters.commits += 1
        if self.batch_limit < self.cfg.batch_size:  # back up after a slow batch (_expired)
            self.batch_limit = min(self.cfg.batch_size, self.batch_limit * 2)
        if self.fire_limit < MAX_FIRES_PER_TICK:
            self.fire_limit = min(MAX_FIRES_PER_TICK, self.fire_limit * 2)
        self._end_txn()

    def _expired(self) -> bool:
        """A transaction open longer than its timeout is aborted, never committed: Kafka's
        coordinator has aborted it already (or will, mid-commit), so abort it here too and
        replay the batch from its first offset. Brokers that never time out a transaction
        (the embedded one) get the same behaviour."""
        took = time.monotonic() - self.txn.began
        limit = self.cfg.transaction_timeout_ms / 1000
        if took <= limit:
            return False
        # Replayed as it was, the batch would take as long and abort again, forever: take
        # half as many records at a time, doubling again with each commit.
        if self.batch.records:  # (a batch of timers alone leaves the record limit be)
            self.batch_limit = max(1, min(self.batch_limit, self.batch.records) // 2)
        fired = self.counters.timers_fired - self._fired_at_begin
        if fired:
            self.fire_limit = max(1, min(self.fire_limit, fired) // 2)
        log.warning(
            "%s: batch of %d records took %.1fs, longer than transaction_timeout_ms=%d: "
            "aborting it and retrying from %s in batches of at most %d records "
            "(a user function is too slow for the timeout?)",
            self.name,
            self.batch.records,
            took,
            self.cfg.transaction_timeout_ms,
            self.batch.first,
            self.batch_limit,
        )
        self.abort()
        return True

    @scoped
    def abort(self) -> None:
        """Abort the open transaction and rewind the consumer to replay its records. The
        task is SUSPENDED until renewed (a fresh producer id) or closed."""
        if not self.txn.in_transaction:
            return
        self.counters.aborts += 1
        try:
            self.txn.abort()
        except (FencedError, BrokerError):
            self._discard()
            self.state = TaskState.SUSPENDED
            raise
        rewind = [TopicPartition(t, self.partition, o) for t, o in self.batch.first.items()]
        self._discard()
        self._move(TaskState.SUSPENDED)
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
        self.watermarks.reset()
        self.upstream.rewound()
        self.ctx.outputs.clear()  # not yet handed to librdkafka: never sent
        self.ctx.timer_ops.clear()
        self.cache.discard()
        self.seen.discard()
        self._end_txn()

    def _end_txn(self) -> None:
        self.batch.clear()
        self.txn.in_transaction = False

    def stats(self) -> dict[str, int]:
        out = asdict(self.counters)
        out["pending_timers"] = self.timers.pending
        return out
