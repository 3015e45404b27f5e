"""The watermark protocol as a state machine: kwheel never makes a record late.

Hypothesis drives the real code (``Task`` on the in-memory transport with Kafka-like
fencing and two timer firings a transaction, ``WatermarkTable``, ``Upstream``, ``ownership``)
through an injector, a relay computation and a downstream reader, in any interleaving: records and
watermarks injected, batches processed, committed or aborted after the watermark was
raised, tasks crashed and reopened by a new owner, two openings racing for one number,
zombies that wake and publish, readers that lag on records or on the watermark topic,
restart, and the watermark topic compacted. After every step:

- the relay processed no record as late (the injector never sends one);
- no reader's watermark is above a committed record it has not consumed yet: that record
  would reach it late. This is the invariant of docs/guarantees.md, checked directly.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kwheel import Computation, Pipeline
from kwheel.config import WorkerConfig
from kwheel.errors import FencedError
from kwheel.kafka.writer import ID_HEADER
from kwheel.runtime import task as task_module
from kwheel.runtime.lifecycle import TaskState
from kwheel.runtime.task import Task
from kwheel.testing.memory import MemoryConsumer, MemoryLog, MemoryProducer
from kwheel.watermarks import MIN_WATERMARK
from kwheel.watermarks.control import INJECTOR, Control, injector_producer_id, task_producer_id
from kwheel.watermarks.ownership import announcement, owner_control, still_owner
from kwheel.watermarks.upstream import Upstream, WatermarkTable

PARTS = 1
INJ = injector_producer_id("source", "i0")


class Relay(Computation):
    """Passes records on, and also at its timer (5 ms later): outputs at the timer's time."""

    def process_record(self, ctx, record):
        ctx.produce("mid", ctx.key, record.value, record.timestamp)
        ctx.set_timer("echo", record.timestamp + 5)

    def process_timer(self, ctx, timer):
        ctx.produce("mid", ctx.key, -1, timer.timestamp)


class Sink(Computation):
    def process_record(self, ctx, record):
        pass


def make_pipeline() -> Pipeline:
    p = Pipeline("m")
    p.stream("events", partitions=PARTS, value="json", source=True)
    p.stream("mid", partitions=PARTS, value="json")
    p.computation("relay", Relay, inputs=["events"], outputs=["mid"])
    p.computation("win", Sink, inputs=["mid"])
    return p.validate()


class WatermarkTopic:
    """The compacted watermark topic: (offset, control) in order; readers keep offsets."""

    def __init__(self) -> None:
        self.records: list[tuple[int, Control]] = []
        self.next = 0

    def publish(self, c: Control) -> None:
        self.records.append((self.next, c))
        self.next += 1

    def read(self, table: WatermarkTable, start: int, n: int | None = None) -> int:
        """Feed the records from offset ``start`` on (at most n) into ``table``; the next offset."""
        todo = [(o, c) for o, c in self.records if o >= start][:n]
        for _, c in todo:
            table.add(c)
        return todo[-1][0] + 1 if todo else start

    def compact(self) -> None:
        latest = {c.key: o for o, c in self.records}
        self.records = [(o, c) for o, c in self.records if latest[c.key] == o]


@dataclass
class Process:
    """A worker process running one relay task: its own view of the watermark topic."""

    task: Task
    table: WatermarkTable
    read_to: int = 0
    dead: bool = False


@dataclass
class Reader:
    """A downstream task: consumed positions, its view of the watermark topic, its watermark."""

    partition: int
    upstream: Upstream
    table: WatermarkTable = field(default_factory=WatermarkTable)
    read_to: int = 0
    consumed: int = 0
    watermark: int = MIN_WATERMARK


class WatermarkProtocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="kwheel-model-"))
        self.cap = task_module.MAX_FIRES_PER_TICK
        task_module.MAX_FIRES_PER_TICK = 2  # timers due at once fire over several ticks: the hold
        self.pipeline = make_pipeline()
        self.log = MemoryLog({t: n for t, (n, _) in self.pipeline.topics().items()})
        self.topic = WatermarkTopic()
        self.injected_watermark = MIN_WATERMARK
        self.opened = 0
        self.sent = 0
        self.live: dict[int, Process] = {}
        self.zombies: list[Process] = []
        for p in range(PARTS):
            self._open(p)
        self.readers = [Reader(p, Upstream(self.pipeline, "win", p)) for p in range(PARTS)]

    def teardown(self) -> None:
        for proc in [*self.live.values(), *self.zombies]:
            proc.task.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        task_module.MAX_FIRES_PER_TICK = self.cap

    # ---- opening a task as runner._on_assign does ----------------------------------------------
    def _open(self, p: int, racing: bool = False, reverse: bool = False) -> Process | None:
        """Announce, fence, check ownership, restore; None if no opening won. ``racing``: two
        openings claim the same number; ``reverse``: the first to announce fences last."""
        table = WatermarkTable()
        read_to = self.topic.read(table, 0)
        pid = task_producer_id("relay", p)
        claims = [announcement(table, pid, ["mid"], 0) for _ in range(2 if racing else 1)]
        for claim in claims:
            self.topic.publish(claim)
        self.opened += 1
        opened = []
        for claim in reversed(claims) if reverse else claims:
            t = WatermarkTable()
            t_read = self.topic.read(t, 0)
            base = self.pipeline.transactional_id("relay", p)
            for n in range(max(0, claim.incarnation - 3), claim.incarnation + 1):
                producer = MemoryProducer(self.log, f"{base}.{n}")
                producer.init_transactions()
            opened.append((claim, t, t_read, producer))
        winner = None
        for claim, t, t_read, producer in opened:
            if not still_owner(t, pid, claim.incarnation, claim.owner):
                continue  # claims.check_still_owner: gives up before restoring
            winner = (claim, t, t_read, producer)
        if winner is None:
            return None
        claim, table, read_to, producer = winner
        old = self.live.pop(p, None)
        if old is not None:
            self.zombies.append(old)
        consumer = MemoryConsumer(self.pipeline.group_id("relay"))
        state_dir = self.tmp / f"open{self.opened}"
        task = Task(
            self.pipeline,
            self.pipeline.computations["relay"],
            p,
            WorkerConfig(state_dir=state_dir, batch_size=1000),
            consumer,
            make_producer=lambda conf: MemoryProducer(self.log, conf["transactional.id"]),
        )
        task.adopt(producer, claim.incarnation, claim.owner)
        applied = [(m.key(), m.value()) for m in self.log.read(task.changelog, p, 0)]
        if applied:
            task.store.apply(applied, self.log.end(task.changelog, p) - 1)
        task.start()
        consumer.positions[("m.events", p)] = self.log.group_offsets.get(
            (consumer.group, "m.events", p), 0
        )
        proc = Process(task, table, read_to)
        self.live[p] = proc
        return proc

    # ---- the injector ---------------------------------------------------------------------------
    @rule(aheads=st.lists(st.integers(0, 30), min_size=1, max_size=4))
    def inject(self, aheads):
        for ahead in aheads:
            self.sent += 1
            key = "abcd"[self.sent % 4]
            ts = max(self.injected_watermark, 0) + ahead
            self.log.append(
                "m.events",
                None,
                self.pipeline.streams["events"].key_serde.encode(key),
                b"1",
                ts,
                [(ID_HEADER, f"r{self.sent}".encode())],
            )

    @rule(by=st.integers(0, 40))
    def injector_publishes(self, by):
        self.injected_watermark = max(self.injected_watermark, 0) + by
        positions = [("m.events", p, self.log.end("m.events", p)) for p in range(PARTS)]
        self.topic.publish(
            Control(INJ, INJECTOR, ["events"], self.injected_watermark, positions, 0)
        )

    # ---- relay processes ------------------------------------------------------------------------
    @rule(
        p=st.integers(0, PARTS - 1),
        n=st.integers(0, 6),
        read=st.one_of(st.none(), st.integers(0, 3)),
        outcome=st.sampled_from(["commit", "commit", "abort", "open"]),
    )
    def relay_runs(self, p, n, read, outcome):
        """The live owner's worker loop: poll records, then tick unless the batch stays open."""
        if p in self.live:
            self._run(self.live[p], n, read, outcome)

    @precondition(lambda self: any(not z.dead for z in self.zombies))
    @rule(
        data=st.data(),
        n=st.integers(0, 6),
        read=st.one_of(st.none(), st.integers(0, 3)),
        outcome=st.sampled_from(["commit", "abort", "open"]),
    )
    def zombie_runs(self, data, n, read, outcome):
        """A process that lost its task wakes up and goes on as if it had not."""
        self._run(
            data.draw(st.sampled_from([z for z in self.zombies if not z.dead])), n, read, outcome
        )

    def _run(self, proc: Process, n: int, read: int | None, outcome: str) -> None:
        if proc.dead:
            return
        task = proc.task
        p = task.partition
        pos = task.consumer.positions.get(("m.events", p), 0)
        msgs = self.log.read("m.events", p, pos)[:n]
        if msgs:
            task.consumer.positions[("m.events", p)] = pos + len(msgs)
            if not self._guard(proc, task.process, msgs):
                return
        if outcome != "open":
            self._tick(proc, read, outcome)

    def _tick(self, proc: Process, read: int | None, outcome: str) -> None:
        """runner.tick: read the watermark topic, advance, fire timers, commit (or see the
        commit abort: a transaction past its timeout, a rejected offset commit), publish."""
        task = proc.task
        proc.read_to = self.topic.read(proc.table, proc.read_to, read)
        pos = task.consumer.positions.get(("m.events", task.partition), 0)
        task.advance(task.upstream.watermark(proc.table, lambda topic: pos))
        if not self._guard(proc, task.fire_timers, 0):
            return
        if outcome == "abort":
            self._guard(proc, task.abort)
        elif not self._guard(proc, task.commit):
            return
        if task.state is TaskState.SUSPENDED and not self._renew(proc):
            return
        positions = [("m.mid", q, self.log.end("m.mid", q)) for q in range(PARTS)]
        c = owner_control(
            proc.table,
            task_producer_id("relay", task.partition),
            task.incarnation,
            task.owner,
            ["mid"],
            task.compute_output_watermark(),
            positions,
            0,
        )
        if c is not None:
            self.topic.publish(c)  # the process takes it in when it reads the topic back

    def _renew(self, proc: Process) -> bool:
        """runner._renew after an abort: still the owner? then announce the next
        incarnation and go on with its fresh transactional id."""
        task = proc.task
        pid = task_producer_id("relay", task.partition)
        proc.read_to = self.topic.read(proc.table, proc.read_to)
        if not still_owner(proc.table, pid, task.incarnation, task.owner):
            proc.dead = True  # claims.check_still_owner raises FencedError
            return False
        claim = announcement(proc.table, pid, ["mid"], 0)
        self.topic.publish(claim)
        proc.read_to = self.topic.read(proc.table, proc.read_to)
        return self._guard(proc, task.renew, claim.incarnation, None, claim.owner)

    def _guard(self, proc: Process, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except FencedError:  # a zombie finds out: it stops (its batch was discarded)
            proc.dead = True
            return False

    @rule(p=st.integers(0, PARTS - 1), racing=st.booleans(), reverse=st.booleans())
    def relay_reopened(self, p, racing, reverse):
        """The task moves (a restart, a rebalance, a crash): the old process lives on as a zombie."""
        self._open(p, racing, reverse)

    # ---- the watermark topic and the readers -------------------------------------------------------
    @rule()
    def watermark_topic_compacted(self):
        self.topic.compact()

    @rule(r=st.integers(0, PARTS - 1), n=st.one_of(st.none(), st.integers(0, 4)))
    def reader_reads_watermarks(self, r, n):
        reader = self.readers[r]
        reader.read_to = self.topic.read(reader.table, reader.read_to, n)
        self._reader_advances(reader)

    @rule(r=st.integers(0, PARTS - 1), n=st.integers(1, 6))
    def reader_consumes(self, r, n):
        reader = self.readers[r]
        reader.consumed = min(self.log.end("m.mid", reader.partition), reader.consumed + n)
        self._reader_advances(reader)

    @rule(r=st.integers(0, PARTS - 1))
    def reader_restarts(self, r):
        """A new process: reads the (maybe compacted) topic from the start; its watermark and
        offsets are what it committed."""
        old = self.readers[r]
        self.readers[r] = Reader(
            old.partition,
            Upstream(self.pipeline, "win", old.partition),
            consumed=old.consumed,
            watermark=old.watermark,
        )

    def _reader_advances(self, reader: Reader) -> None:
        w = reader.upstream.watermark(reader.table, lambda topic: reader.consumed)
        reader.watermark = max(reader.watermark, w)

    # ---- the invariant -----------------------------------------------------------------------------
    @invariant()
    def no_record_is_made_late(self):
        for proc in self.live.values():
            assert proc.task.counters.late == 0, (
                f"relay[{proc.task.partition}] processed a record as late"
            )
            pos = proc.task.consumer.positions.get(("m.events", proc.task.partition), 0)
            for m in self.log.read("m.events", proc.task.partition, pos):
                assert m.timestamp()[1] >= proc.task.input_watermark, (
                    f"relay[{proc.task.partition}] watermark {proc.task.input_watermark} passed an unread record "
                    f"at {m.timestamp()[1]}"
                )
        for reader in self.readers:
            for m in self.log.read("m.mid", reader.partition, reader.consumed):
                assert m.timestamp()[1] >= reader.watermark, (
                    f"reader[{reader.partition}] watermark {reader.watermark} passed an unread record "
                    f"at {m.timestamp()[1]} (mid[{reader.partition}]@{m.offset()})"
                )


WatermarkProtocol.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_watermark_protocol = WatermarkProtocol.TestCase
