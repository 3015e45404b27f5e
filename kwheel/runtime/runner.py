"""Runs one computation in this process: its consumer-group member and the tasks it owns."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from ..config import WorkerConfig
from ..errors import BrokerError, FencedError
from ..kafka import clients
from ..kafka.clients import ConsumedMessage
from ..kafka.fencing import is_fatal, is_fenced
from ..logs import about, scoped
from ..pipeline import Pipeline
from ..watermarks.control import task_producer_id
from ..watermarks.ownership import owner_control
from ..watermarks.transport import WatermarkPublisher
from ..watermarks.upstream import WatermarkTable
from . import stats_file
from .claims import TaskClaims
from .lifecycle import TaskState
from .purge import RepartitionPurger
from .task import Task

if TYPE_CHECKING:
    from .metrics import WorkerMetrics

HEARTBEAT_S = 1.0  # an unchanged watermark is republished this often, so idle stages advance
MIN_PUBLISH_S = 0.03  # a changed watermark is published at most this often per task
# Latency: while a batch is open, the consumer waits at most BUSY_WAIT_S for more records
# before the loop checks whether to commit; a task that has caught up with its input
# commits once its batch is EARLY_COMMIT_S old instead of waiting for commit_interval_ms.
# Under a backlog, batches stay full and commits stay rare.
BUSY_WAIT_S = 0.005
EARLY_COMMIT_S = 0.02
# A restoring task replays its changelog between polls for at most this long per loop
# (RESTORE_ALONE_S when no task of this runner is running, so nothing waits on it).
RESTORE_SLICE_S = 0.05
RESTORE_ALONE_S = 0.5
# A cooperative revocation returns no sooner than this (see _on_revoke).
COOPERATIVE_REJOIN_AFTER_S = 0.2
FENCE_BACK = 3  # a new incarnation fences this many before it (zombies whose successor died early)

log = logging.getLogger("kwheel.worker")


class ComputationRunner:
    """Consumes the computation's input topics and drives one Task per assigned partition."""

    def __init__(
        self,
        pipeline: Pipeline,
        computation: str,
        cfg: WorkerConfig,
        table: WatermarkTable,
        publisher: WatermarkPublisher,
        catch_up: Callable[[], None],
    ):
        self.pipeline = pipeline
        self.spec = pipeline.computations[computation]
        self.cfg = cfg
        self.table = table
        self.publisher = publisher
        self.catch_up = catch_up  # reads the watermark topic to its end
        self.topics = [ti.topic for ti in pipeline.task_inputs(computation)]
        self.purger = RepartitionPurger(
            cfg, [ti.topic for ti in pipeline.task_inputs(computation) if ti.repartitioned]
        )
        # every partition this computation writes: what its watermarks must cover
        out_topics = [r.topic for s in self.spec.outputs for r in pipeline.routes(s)]
        if self.spec.dead_letter:
            out_topics.append(pipeline.streams[self.spec.dead_letter].topic)
        parts = pipeline.topics()
        self.output_partitions = [
            (t, p) for t in dict.fromkeys(out_topics) for p in range(parts[t][0])
        ]
        self.streams_out = list(self.spec.outputs) + (
            [self.spec.dead_letter] if self.spec.dead_letter else []
        )
        self.claims = TaskClaims(computation, self.streams_out, cfg, table, publisher, catch_up)
        self._committed: dict[tuple[str, int], int] = {}
        self._published: dict[int, tuple[int, float]] = {}  # partition -> (watermark, when)
        instance = f"{cfg.slot}" if cfg.slot else None
        conf = clients.group_consumer_config(cfg, pipeline.group_id(computation), instance)
        self.consumer = Consumer(conf)
        self.tasks: dict[int, Task] = {}  # running
        self.restoring: dict[int, Task] = {}  # fenced, restoring between polls (paused)
        self.kept: dict[int, Task] = {}  # revoked, until the assignment after says if they stay
        self._changelog_reader: Consumer | None = None  # created at the first restore
        self.assigned = False  # an assignment was taken up: the first join is done (health.py)
        self.metrics: WorkerMetrics | None = None  # when the worker serves metrics
        self._last_commit = time.monotonic()
        self._open = False  # some task has an uncommitted batch
        self._pool: ThreadPoolExecutor | None = None  # commits tasks in parallel
        self._fatal: Exception | None = None
        # Cooperative rebalancing (cooperative-sticky) does not co-assign partition p of
        # several topics to one member, and a task reads partition p of every input topic:
        # so the group assigns one lead topic, and the member that gets its partition p
        # assigns itself p of the other input topics (their offsets are the group's too).
        self.cooperative = cfg.rebalancing == "cooperative"
        self.lead = sorted(self.topics)[0]
        self.consumer.subscribe(
            [self.lead] if self.cooperative else self.topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    # ---- group membership --------------------------------------------------------------
    def owned(self) -> list[tuple[int, Task]]:
        """(partition, task) of every task this runner holds, running or restoring (safe to
        call from the metrics thread)."""
        return list(self.tasks.items()) + list(self.restoring.items())

    def _task_partitions(self, partitions: set[int]) -> list[TopicPartition]:
        """Partition p of every input topic, for each task p."""
        return [TopicPartition(t, p) for p in sorted(partitions) for t in self.topics]

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        """Take up an assignment (eager: the whole new assignment; cooperative: what was
        added). Tasks kept from an eager revocation just before go on where they were; new
        ones are claimed and fenced here, then restore in the loop (step) with their
        partitions paused, so a long restore never stops the consumer polling."""
        wanted = {tp.partition for tp in parts}
        # eager: range gave partition p of every input topic; cooperative: of the lead one
        assigned = parts if not self.cooperative else self._task_partitions(wanted)
        fresh: list[int] = []
        try:
            self._take_back_kept(wanted)
            fresh = sorted(wanted - set(self.tasks) - set(self.restoring))
            if fresh:
                self.catch_up()  # the newest incarnation every task announced
                # fences the previous owners first: the offsets below are final
                self._open_tasks(consumer, fresh)
            if assigned:
                for tp in consumer.committed(assigned, timeout=self.cfg.startup_timeout_s):
                    self._committed[(tp.topic, tp.partition)] = max(tp.offset, 0)
                    if tp.offset >= 0:
                        self._check_log_start(consumer, tp, assigned)
        except Exception as e:  # raised inside librdkafka's callback: surface it from step()
            self._fatal = e
        if self.cooperative:
            consumer.incremental_assign(assigned)
        else:
            consumer.assign(assigned)
        paused = [tp for tp in assigned if tp.partition in self.restoring]
        if paused:
            consumer.pause(paused)
        for p in fresh if self._fatal is None else []:
            if p in self.tasks:  # nothing to restore: ready now
                self._ready(self.tasks[p])
        self.assigned = True

    def _take_back_kept(self, wanted: set[int]) -> None:
        """Tasks revoked by the last (eager) rebalance and assigned here again go on as they
        were: no announcement, fencing or restore. In an eager rebalance every member lets
        go of every partition before the new assignment, so no other process owned them
        in between; the claim check below makes sure no later opening announced itself.
        The others are closed."""
        kept, self.kept = self.kept, {}
        back = [t for p, t in sorted(kept.items()) if p in wanted]
        for p, task in kept.items():
            if p not in wanted:
                self._close(task, "moved to another member")
        if back:
            self.catch_up()
        for task in back:
            try:
                self.claims.check_still_owner(task, read=False)
            except FencedError as e:
                self._close(task, str(e))
                continue
            into = self.restoring if task.state is TaskState.RESTORING else self.tasks
            into[task.partition] = task
            log.info("%s: kept across the rebalance", task.name, extra=about(task))

    def _open_tasks(self, consumer: Consumer, fresh: list[int]) -> None:
        """Open newly assigned tasks: claim each on the watermark topic, fence the earlier
        owners of all of them at once (their InitProducerId round trips overlap in
        librdkafka's threads instead of adding up), check every claim still holds, then
        begin each one's restore (step() goes on with it). A task that fails is closed
        (its store and producer); the error goes out of step()."""
        created: list[Task] = []
        try:
            claims: dict[int, tuple[int, str]] = {}
            for p in fresh:
                claims[p] = self.claims.announce(p)
                created.append(Task(self.pipeline, self.spec, p, self.cfg, consumer))

            def fence(task: Task) -> None:
                incarnation, token = claims[task.partition]
                task.fence(incarnation, max(0, incarnation - FENCE_BACK), owner=token)

            if len(created) == 1:
                fence(created[0])
            else:
                workers = min(8, len(created))
                with ThreadPoolExecutor(workers, f"kwheel-open-{self.spec.name}") as pool:
                    for future in [pool.submit(fence, task) for task in created]:
                        future.result()
            for task in created:
                self.claims.check_still_owner(task)
            for task in created:
                task.begin_restore(self._reader())
                if task.restore_remaining:
                    self.restoring[task.partition] = task
                else:
                    task.restore_step(0)  # nothing to replay: finishes at once
                    task.start()
                    self.tasks[task.partition] = task
        except Exception:
            for task in created:
                if self.tasks.get(task.partition) is not task:
                    self.restoring.pop(task.partition, None)
                    task.close()
            raise

    def _reader(self) -> Consumer:
        """The changelog reader this runner's restores share (one task at a time)."""
        if self._changelog_reader is None:
            self._changelog_reader = Consumer(clients.reader_config(self.cfg))
        return self._changelog_reader

    def _restore_some(self) -> None:
        """Give restoring tasks a slice of time, one task after another in partition order
        (the first is ready soonest, and a finished restore is on disk should the process
        die), and start those that caught up. Short slices while other tasks run (their
        latency), longer ones when only restores are left."""
        deadline = time.monotonic() + (RESTORE_SLICE_S if self.tasks else RESTORE_ALONE_S)
        for p in sorted(self.restoring):
            task = self.restoring[p]
            if not task.restore_step(max(0.0, deadline - time.monotonic())):
                return
            del self.restoring[p]
            task.start()
            self.tasks[p] = task
            self.consumer.resume([TopicPartition(t, p) for t in self.topics])
            self._ready(task)
            if time.monotonic() >= deadline:
                return

    def _ready(self, task: Task) -> None:
        starts = {t: self._committed.get((t, task.partition), 0) for t in self.topics}
        log.info(
            "%s: assigned and ready (restored %d records; starts at %s)",
            task.name,
            task.counters.restored,
            starts,
            extra=about(task),
        )
        stats_file.write("ready", task)

    def _check_log_start(
        self, consumer: Consumer, committed: TopicPartition, parts: list[TopicPartition]
    ) -> None:
        """Records deleted before they were processed: say so, then apply offset_reset."""
        low, high = consumer.get_watermark_offsets(
            TopicPartition(committed.topic, committed.partition), timeout=self.cfg.startup_timeout_s
        )
        if committed.offset >= low:
            return
        where = f"{committed.topic}[{committed.partition}]"
        msg = (
            f"computation {self.spec.name!r}: committed offset {committed.offset} of {where} is below the log "
            f"start {low}: {low - committed.offset} records were deleted before being processed"
        )
        if self.cfg.offset_reset == "fail":
            raise BrokerError(f"{msg} (offset_reset=fail)")
        to = low if self.cfg.offset_reset == "earliest" else high
        log.warning("%s; resuming at %d (offset_reset=%s)", msg, to, self.cfg.offset_reset)
        for tp in parts:
            if (tp.topic, tp.partition) == (committed.topic, committed.partition):
                tp.offset = to
        self._committed[(committed.topic, committed.partition)] = to

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        """Commit what the revoked tasks did. Eager: keep them until the assignment that
        follows (every partition is revoked; most come back). Cooperative: they move to
        another member, so close them."""
        began = time.monotonic()
        revoked = {tp.partition for tp in parts}
        for p in sorted(revoked):
            task = self.tasks.pop(p, None) or self.restoring.pop(p, None)
            if task is None:
                continue
            if task.state is TaskState.RUNNING:
                try:
                    task.commit()
                except FencedError as e:
                    log.warning("%s", e, extra=about(task))
                except Exception as e:
                    log.warning("%s: commit on revoke failed: %s", task.name, e, extra=about(task))
            if not self.cooperative and task.state in (TaskState.RUNNING, TaskState.RESTORING):
                self.kept[p] = task
                log.info(
                    "%s: revoked (committed up to %s)",
                    task.name,
                    task.committed_offsets,
                    extra=about(task),
                )
            else:
                self._close(task, f"revoked (committed up to {task.committed_offsets})")
        if self.cooperative:
            consumer.incremental_unassign(self._task_partitions(revoked))
            # librdkafka rejoins as soon as this returns; the embedded test broker then
            # loses the JoinGroup answer of a member that joined meanwhile, and the group
            # stalls until that request times out (docs/operations.md#rebalancing)
            left = COOPERATIVE_REJOIN_AFTER_S - (time.monotonic() - began)
            if parts and left > 0:
                time.sleep(left)

    def _close(self, task: Task, why: str) -> None:
        task.close()
        log.info("%s: closed: %s", task.name, why, extra=about(task))

    def _on_lost(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Partitions lost (session expired): someone else may own them, so do not commit.
        lost = {tp.partition for tp in parts}
        for p in sorted(lost):
            task = self.tasks.pop(p, None) or self.restoring.pop(p, None) or self.kept.pop(p, None)
            if task is not None:
                self._abort_task(task)  # logged: closing must go on
                task.close()
                log.warning("%s: partitions lost (session expired)", task.name, extra=about(task))
        if self.cooperative:
            consumer.incremental_unassign(self._task_partitions(lost))

    # ---- the loop ------------------------------------------------------------------------
    @scoped
    def step(self, timeout: float) -> None:
        """Consume one batch, process it by task, and commit when a batch closes."""
        if self.restoring:
            self._restore_some()
        if self._open:
            timeout = min(timeout, BUSY_WAIT_S)
        if self.restoring:
            timeout = 0.0  # more restoring to do: only take what is there
        # consume(n, t) waits until it has n records or t passed: at a low rate every record
        # would wait out t. Wait for the first record only, then take what is already there.
        first = cast("ConsumedMessage | None", self.consumer.poll(timeout))
        msgs = [] if first is None else [first]
        limit = min([t.batch_limit for t in self.tasks.values()], default=self.cfg.batch_size)
        if first is not None and limit > 1:
            msgs += cast("list[ConsumedMessage]", self.consumer.consume(limit - 1, 0))
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            raise fatal
        by_task: dict[int, list[ConsumedMessage]] = defaultdict(list)
        for m in msgs:
            err = m.error()
            if err is not None:
                self._consumer_error(err)
                continue
            by_task[m.partition()].append(m)
        for p, ms in by_task.items():
            task = self.tasks.get(p)
            if task is None:
                self._not_running(p, ms)
                continue
            try:
                task.process(ms)
            except Exception:
                self._abort_task(task)
                raise
        since = time.monotonic() - self._last_commit
        pending = [t.pending for t in self.tasks.values()]
        self._open = any(pending)
        if since >= self.cfg.commit_interval_ms / 1000 or any(
            t.timers_left for t in self.tasks.values()
        ):
            self.tick()
        elif any(t.pending >= t.batch_limit for t in self.tasks.values()):
            self.commit()
        elif (
            self._open and since >= EARLY_COMMIT_S and len(msgs) < max(1, self.cfg.batch_size // 10)
        ):
            self.tick()  # caught up: make the outputs visible now

    def _not_running(self, p: int, ms: list[ConsumedMessage]) -> None:
        """Records of a partition with no running task: revoked inside this consume() (the
        new owner starts from the committed offset), or still restoring, where pausing
        should have kept them back: rewind, so they are read again once it runs."""
        if p not in self.restoring:
            return
        first: dict[str, int] = {}
        for m in ms:
            first.setdefault(m.topic(), m.offset())
        for topic, offset in first.items():
            self.consumer.seek(TopicPartition(topic, p, offset))

    def tick(self) -> None:
        """Advance watermarks, fire due timers, commit, then publish watermarks."""
        tps = [TopicPartition(t, p) for p in self.tasks for t in self.topics]
        consumed = dict(self._committed)
        if tps:
            for tp in self.consumer.position(tps):
                if tp.offset >= 0:
                    consumed[(tp.topic, tp.partition)] = tp.offset
        if self.metrics is not None:
            self.metrics.ticked(self, consumed)
        now_ms = int(time.time() * 1000)
        for p, task in list(self.tasks.items()):

            def position(topic: str, p: int = p) -> int:
                return consumed.get((topic, p), 0)

            w = task.upstream.watermark(self.table, position)
            task.advance(w)
            try:
                task.fire_timers(now_ms)
            except Exception:
                self._abort_task(task)
                raise
        self.commit()
        self.publish()

    def publish(self) -> None:
        """Tell downstream how far each task got: after its outputs are committed."""
        if not self.tasks:
            return
        now = time.monotonic()
        todo = {}
        for p, task in self.tasks.items():
            last = self._published.get(p)
            w = max(
                task.compute_output_watermark(),
                self.table.published(task_producer_id(self.spec.name, p)),
            )
            if (
                last is None
                or (last[0] != w and now - last[1] >= MIN_PUBLISH_S)
                or now - last[1] >= HEARTBEAT_S
            ):
                todo[p] = task
        if not todo:
            return
        ends = self.publisher.end_offsets(self.output_partitions)
        positions = [(t, q, o) for (t, q), o in ends.items()]
        wall = int(time.time() * 1000)
        for p, task in todo.items():
            pid = task_producer_id(self.spec.name, p)
            control = owner_control(
                self.table,
                pid,
                task.incarnation,
                task.owner,
                self.streams_out,
                task.compute_output_watermark(),
                positions,
                wall,
                task.input_watermark,
                task.stats(),
            )
            if control is None:
                continue  # a newer opening announced itself: readers would drop this (ownership.py)
            self.publisher.publish(control)  # the table takes it in when the reader reads it back
            self._published[p] = (control.watermark, now)

    def _consumer_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal() or is_fatal(err):
            # a static member's (a slot's) fatal error is its fencing: kafka/fencing.py
            if is_fenced(err) or self.cfg.slot is not None:
                raise FencedError(
                    f"worker slot {self.cfg.slot!r} was fenced in group {self.pipeline.group_id(self.spec.name)!r}: "
                    f"another process joined with the same slot id ({err.str()})"
                )
            raise BrokerError(f"consumer of {self.spec.name!r} failed: {err.str()}")
        log.warning("%s: consumer: %s", self.spec.name, err.str())

    def commit(self) -> None:
        """Commit every task's open batch. A fenced task ends the worker (FencedError):
        another process owns it now, and a restart rejoins the group cleanly.

        Tasks commit in parallel threads: each has its own producer and store, and most of
        a commit is waiting on the broker (librdkafka releases the GIL), so the tasks'
        round trips overlap instead of adding up."""
        todo = [(p, t) for p, t in self.tasks.items() if t.needs_commit]
        failures: list[tuple[int, Task, Exception]] = []
        if len(todo) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=8, thread_name_prefix=f"kwheel-commit-{self.spec.name}"
                )
            results = [(p, t, self._pool.submit(self._commit_task, t)) for p, t in todo]
            for p, task, future in results:
                try:
                    future.result()
                except Exception as e:
                    failures.append((p, task, e))
        else:
            for p, task in todo:
                try:
                    self._commit_task(task)
                except Exception as e:
                    failures.append((p, task, e))
        self._last_commit = time.monotonic()
        self._open = False
        for p, task in todo:
            if task.state is TaskState.SUSPENDED and not any(task is t for _, t, _ in failures):
                try:
                    self._renew(task)
                except Exception as e:
                    failures.append((p, task, e))
        for p, task, error in failures:
            if isinstance(error, FencedError):
                del self.tasks[p]
                task.close()
        if failures:
            fenced: list[Exception] = [e for _, _, e in failures if isinstance(e, FencedError)]
            raise (fenced or [failures[0][2]])[0]
        self.purger.maybe_purge(self.tasks)

    def _renew(self, task: Task) -> None:
        """A task whose transaction aborted goes on as a new incarnation (Task.renew), if it
        is still its owner: a zombie's abort may succeed before its successor fenced it."""
        self.claims.check_still_owner(task)
        incarnation, token = self.claims.announce(task.partition)
        task.renew(incarnation, check_owner=self.claims.check_still_owner, owner=token)
        log.info(
            "%s: renewed as incarnation %d after an abort",
            task.name,
            incarnation,
            extra=about(task),
        )

    def _commit_task(self, task: Task) -> None:
        commits, started = task.counters.commits, time.monotonic()
        task.commit()
        if self.metrics is not None and task.counters.commits != commits:
            self.metrics.committed(self.spec.name, task.txn.began, started, time.monotonic())

    def _abort_task(self, task: Task) -> None:
        try:
            task.abort()
        except Exception as e:
            log.warning("%s: abort failed: %s", task.name, e, extra=about(task))

    @scoped
    def close(self, commit: bool = True, advance: bool = True) -> None:
        """Commit (unless failing), leave the group, close every task. With
        ``advance`` the last commit is a tick: watermarks, timers, a last publish."""
        if commit and advance:
            self.tick()
        elif commit:
            self.commit()
        else:
            for task in self.tasks.values():
                self._abort_task(task)
        try:
            self.consumer.close()  # revokes: running tasks commit (unless failing) and are kept
        except KafkaException as e:
            log.warning("%s: closing consumer: %s", self.spec.name, e)
        for task in [*self.tasks.values(), *self.restoring.values(), *self.kept.values()]:
            task.close()
        self.restoring.clear()
        self.kept.clear()
        if self._changelog_reader is not None:
            self._changelog_reader.close()
        self.tasks.clear()
        if self._pool is not None:
            self._pool.shutdown()
        self.purger.close()
