"""Run a pipeline in this process, without a broker, deterministically (cf. Kafka Streams'
TopologyTestDriver).

The driver runs the worker's own processing code: every computation runs as its real
``Task`` objects, one per partition (keys are partitioned with Kafka's murmur2, as the
producers do), each with a real RocksDB store in a temporary directory, and every step
ends with the real ``Task.commit``. Only the transport differs: an in-memory log of
committed records (kwheel/testing/memory.py) instead of Kafka topics.

Time is the test's: records get processed when the driver runs (every call that advances
time or inspects results runs it first), watermarks move only when the test advances a
fed stream's watermark, and the wall clock only when the test advances it. A run goes
round the computations in declaration order until nothing changes, each task doing what
a worker tick does: process its new input records, raise its input watermark (the min
over its input streams), fire due timers, commit; a stream's watermark is the min of the
output watermarks (``Task.compute_output_watermark``) of the tasks writing it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from .. import registry
from ..config import WorkerConfig
from ..errors import KwheelError, SerdeError
from ..ids import new_id
from ..injector import BoundedDisorder
from ..kafka.writer import ID_HEADER, StreamWriter
from ..pipeline import Pipeline, Stream
from ..record import Key, Record, TimeDomain, Timer
from ..runtime.lifecycle import TaskState
from ..runtime.task import Task
from ..sources import SourceEnv
from ..state import layout
from ..watermarks import MAX_WATERMARK, MIN_WATERMARK
from .memory import MemoryConsumer, MemoryLog, MemoryMessage, MemoryProducer

#: the watermark of a stream that has ended: every event timer downstream fires
END = MAX_WATERMARK
MAX_ROUNDS = 10_000


class PipelineDriver:
    """Drive ``pipeline`` (or only the computations named in ``only``) in this process.

    Use as a context manager, or call ``close()``. Streams that no running computation
    writes are *fed* by the test: ``send`` records to them and ``advance_watermark`` them.
    ``state_dir`` holds the RocksDB stores (default: a temporary directory, removed on
    close); ``config`` supplies the other worker settings (batch size, dedup horizon);
    ``wall_clock_ms`` starts the driver's clock (default: now; give it for exact repeats).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        only: str | Iterable[str] | None = None,
        state_dir: str | Path | None = None,
        config: WorkerConfig | None = None,
        wall_clock_ms: int | None = None,
    ):
        pipeline.validate()
        self.pipeline = pipeline
        names = [only] if isinstance(only, str) else list(only or pipeline.computations)
        for n in names:
            if n not in pipeline.computations:
                raise KwheelError(
                    f"driver: unknown computation {n!r} (pipeline {pipeline.name!r} has "
                    f"{', '.join(pipeline.computations)})"
                )
        self.computations = [c for c in pipeline.computations if c in names]  # declaration order
        self._tmp = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kwheel-driver-")
            state_dir = self._tmp.name
        self.config = replace(config or WorkerConfig(), state_dir=Path(state_dir))
        # Avro serdes declared with registry=True use the configured registry, as in a worker
        pipeline = self.pipeline = registry.bind(
            pipeline, registry.SchemaRegistry.from_config(self.config)
        )
        self.log = MemoryLog({t: n for t, (n, _) in pipeline.topics().items()})
        self._writer = StreamWriter(pipeline)
        self._wall = int(time.time() * 1000) if wall_clock_ms is None else wall_clock_ms
        writers: dict[str, list[str]] = {s: [] for s in pipeline.streams}
        for c in self.computations:
            spec = pipeline.computations[c]
            for s in spec.outputs + ([spec.dead_letter] if spec.dead_letter else []):
                writers[s].append(c)
        self._writers = writers
        self.fed = [s for s, st in pipeline.streams.items() if st.source or not writers[s]]
        self._fed_watermarks = {s: MIN_WATERMARK for s in self.fed}
        self._out_watermarks = {c: MIN_WATERMARK for c in self.computations}
        self._consumers = {c: MemoryConsumer(pipeline.group_id(c)) for c in self.computations}
        self._tasks: dict[str, list[Task]] = {}
        self._failed = False
        try:
            for c in self.computations:
                self._tasks[c] = [
                    self._open(c, p) for p in range(pipeline.computations[c].partitions)
                ]
        except BaseException:
            self.close()
            raise

    # ---- tasks ------------------------------------------------------------------------
    def _open(
        self, computation: str, partition: int, incarnation: int = 1, wipe: bool = False
    ) -> Task:
        """A real Task on the in-memory transport, its store caught up with its changelog."""
        spec = self.pipeline.computations[computation]
        task = Task(
            self.pipeline,
            spec,
            partition,
            self.config,
            self._consumers[computation],
            make_producer=self._producer,
        )
        try:
            if wipe:
                task.store.wipe()
            task.fence(incarnation, fence_from=incarnation)
            applied: list[tuple[bytes, bytes | None]] = []
            for m in self.log.read(task.changelog, partition, task.store.applied_offset + 1):
                applied.append((cast(bytes, m.key()), m.value()))  # changelog records have keys
            if applied:  # a wiped or stale store: replay the changelog, like a restore from Kafka
                task.store.apply(applied, self.log.end(task.changelog, partition) - 1)
                task.counters.restored += len(applied)
            task.start()
        except BaseException:
            task.close()
            raise
        return task

    def _producer(self, conf: dict[str, object]) -> MemoryProducer:
        return MemoryProducer(self.log, str(conf["transactional.id"]), clock=lambda: self._wall)

    def _renew_if_aborted(self, task: Task) -> None:
        """As the worker does: a task whose transaction aborted goes on as its next
        incarnation, with a fresh transactional id."""
        if task.state is TaskState.SUSPENDED:
            task.renew(task.incarnation + 1)

    def restart(self, wipe_state: bool = False) -> None:
        """Close every task and open it again, as a worker restart would: from the committed
        input offsets, and from the local stores, or with ``wipe_state`` from the changelog
        alone (the path of a task moved to a machine without its state)."""
        self.run()
        for c, tasks in self._tasks.items():
            for i, task in enumerate(tasks):
                incarnation = task.incarnation + 1
                task.close()
                consumer = self._consumers[c]
                for topic in task.inputs:
                    consumer.positions[(topic, task.partition)] = self.log.group_offsets.get(
                        (consumer.group, topic, task.partition), 0
                    )
                tasks[i] = self._open(c, task.partition, incarnation, wipe=wipe_state)

    # ---- feeding ----------------------------------------------------------------------
    def send(
        self,
        stream: str,
        key: Key,
        value: object,
        timestamp: int | None = None,
        id: bytes | None = None,
    ) -> bytes:
        """Append a record to a fed stream (and its repartition topics); return its id.
        It is processed at the next run. ``timestamp`` defaults to the wall clock."""
        self._fed(stream)
        rid = id or new_id()
        ts = self._wall if timestamp is None else int(timestamp)
        for topic, kb, vb, t, r, partition in self._writer.encode(stream, key, value, ts, rid):
            self.log.append(topic, partition, kb, vb, t, [(ID_HEADER, r)])
        return rid

    def advance_watermark(self, stream: str, watermark: int) -> None:
        """Promise that no more records older than ``watermark`` come on ``stream`` (later
        ones are late); run the pipeline with it. A lower value than before is ignored."""
        self._fed(stream)
        self.run()
        if watermark > self._fed_watermarks[stream]:
            self._fed_watermarks[stream] = watermark
        self.run()

    def finish(self, stream: str | None = None) -> None:
        """End ``stream`` (every fed stream if None): its watermark becomes END."""
        self.run()
        for s in [stream] if stream else self.fed:
            self._fed(s)
            self._fed_watermarks[s] = END
        self.run()

    def advance_wall_clock(self, ms: int) -> None:
        """Move the wall clock forward by ``ms`` and fire the wall timers now due."""
        if ms < 0:
            raise ValueError(f"the wall clock only moves forward, got {ms} ms")
        self.run()
        self._wall += ms
        self.run()

    @property
    def wall_clock(self) -> int:
        """The driver's clock (ms): wall-time timers fire up to it; default record timestamps."""
        return self._wall

    def run_injector(self, name: str, batch: int = 1000, final: bool = True) -> int:
        """Feed the pipeline from its declared injector ``name`` as ``kwheel inject`` would:
        its source's records, with the watermark of its bounded-disorder policy (or the
        source's own) advanced after every ``batch`` records; ``final`` ends its streams.
        Returns how many records were sent."""
        spec = self.pipeline.injectors.get(name)
        if spec is None:
            raise KwheelError(
                f"driver: unknown injector {name!r} (declared: {', '.join(self.pipeline.injectors) or 'none'})"
            )
        source = spec.source()
        source.open(SourceEnv(self.pipeline.name, name, 0, 1, self.config))
        policy = BoundedDisorder(spec.disorder_ms)
        sent = empty = 0
        try:
            while (records := source.poll(batch)) is not None:
                empty = 0 if records else empty + 1
                if empty > 1000:
                    raise KwheelError(
                        f"driver: injector {name!r} returned no records 1000 times in a row"
                    )
                for r in records:
                    self.send(r.stream or spec.outputs[0], r.key, r.value, r.timestamp, r.id)
                    policy.observe(r.timestamp)
                sent += len(records)
                own = source.watermark()
                for s in spec.outputs:
                    self.advance_watermark(s, policy.watermark if own is None else own)
                source.committed()
        finally:
            source.close()
        if final:
            for s in spec.outputs:
                self.finish(s)
        return sent

    def _fed(self, stream: str) -> None:
        if stream not in self.pipeline.streams:
            raise KwheelError(
                f"driver: unknown stream {stream!r} (declared: {', '.join(self.pipeline.streams)})"
            )
        if stream not in self._fed_watermarks:
            raise KwheelError(
                f"driver: stream {stream!r} is written by computation(s) "
                f"{', '.join(self._writers[stream])}; only streams they do not write can be fed"
            )

    # ---- running ----------------------------------------------------------------------
    def run(self) -> None:
        """Process everything pending until the pipeline is quiet: records, watermarks, timers.

        A record or timer that fails (without a dead-letter stream) raises its RecordError
        here, its task's batch aborted, as a worker would stop; the next run replays it.
        Until a run succeeds, inspecting shows what was committed without running again."""
        self._failed = True
        for _ in range(MAX_ROUNDS):
            busy = False
            for c in self.computations:
                busy = self._step(c) or busy
            if not busy:
                self._failed = False
                return
        raise KwheelError(
            f"driver: the pipeline was still busy after {MAX_ROUNDS} rounds (a cycle that never ends?)"
        )

    def _step(self, computation: str) -> bool:
        """One worker tick of every task of ``computation``; True if anything moved."""
        busy = False
        watermark = self._input_watermark(computation)
        consumer = self._consumers[computation]
        for task in self._tasks[computation]:
            self._renew_if_aborted(task)
            p = task.partition
            msgs: list[MemoryMessage] = []
            starts = {topic: consumer.positions.get((topic, p), 0) for topic in task.inputs}
            for topic in task.inputs:
                start = consumer.positions.get((topic, p), 0)
                new = self.log.read(topic, p, start)
                if new:
                    msgs.extend(new)
                    consumer.positions[(topic, p)] = start + len(new)
            try:
                if msgs:
                    busy = True
                    msgs.sort(key=lambda m: m.seq)  # arrival order over all inputs
                    size = self.config.batch_size
                    for i in range(0, len(msgs), size):
                        task.process(msgs[i : i + size])
                        task.commit()
                        self._renew_if_aborted(task)
                task.advance(watermark)
                task.fire_timers(self._wall)
                busy = busy or task.timers_left
            except BaseException:
                task.abort()  # as the worker does: the batch is replayed next time
                for (
                    topic
                ) in task.inputs:  # every input, not only the failed chunk's: from the last commit
                    consumer.positions[(topic, p)] = task.committed_offsets.get(
                        topic, starts[topic]
                    )
                raise
            task.commit()
            self._renew_if_aborted(task)
        out = min(t.compute_output_watermark() for t in self._tasks[computation])
        if out != self._out_watermarks[computation]:
            self._out_watermarks[computation] = out
            busy = True
        return busy

    def _stream_watermark(self, stream: str) -> int:
        w = min((self._out_watermarks[c] for c in self._writers[stream]), default=MAX_WATERMARK)
        if stream in self._fed_watermarks:
            w = min(w, self._fed_watermarks[stream])
        return w

    def _input_watermark(self, computation: str) -> int:
        return min(
            self._stream_watermark(i.stream) for i in self.pipeline.computations[computation].inputs
        )

    # ---- inspecting -------------------------------------------------------------------
    def outputs(self, stream: str) -> list[Record]:
        """Every committed record of ``stream``, decoded, in commit order."""
        self._settle()
        s = self._stream(stream)
        out = []
        for m in self.log.messages(s.topic):
            where = f"{s.topic}[{m.partition()}]@{m.offset()}"
            try:
                key = None if (kb := m.key()) is None else s.key_serde.decode(kb)
                value = None if (vb := m.value()) is None else s.value_serde.decode(vb)
            except Exception as e:
                raise SerdeError(
                    f"driver: cannot decode the record of stream {stream!r} at {where}: {e}"
                ) from None
            rid = next((v for k, v in m.headers() or () if k == ID_HEADER), b"")
            # the key as the stream's key serde decodes it (None for a keyless record)
            out.append(Record(key, value, m.timestamp()[1], rid, stream))  # type: ignore[arg-type]
        return out

    def messages(self, stream: str) -> list[MemoryMessage]:
        """The raw committed messages of ``stream`` (bytes and headers, e.g. of dead letters)."""
        self._settle()
        return self.log.messages(self._stream(stream).topic)

    def state(self, computation: str, key: Key) -> dict[str, Any]:
        """The committed state of ``key`` in ``computation`` ({} when it has none)."""
        self._settle()
        for task in self._running(computation):
            raw = task.store.get(layout.state_key(key))
            if raw is not None:
                return layout.decode_state(raw)
        return {}

    def timers(self, computation: str, key: Key | None = None) -> list[Timer]:
        """The pending timers of ``computation`` (of one key), in firing order."""
        self._settle()
        out = []
        for task in self._running(computation):
            for domain in TimeDomain:
                for ts, tkey in task.store.timers(domain, MAX_WATERMARK):
                    keytag, tag = layout.split_timer_key(tkey)
                    k = layout.key_from_tag(keytag)
                    if key is None or k == key:
                        out.append(Timer(k, tag, ts, domain))
        out.sort(key=lambda t: (t.timestamp, t.domain, repr(t.key), t.tag))
        return out

    def watermark(self, computation: str) -> int:
        """The input low watermark of ``computation`` (MIN_WATERMARK before any is known)."""
        self._settle()
        return min(t.input_watermark for t in self._running(computation))

    def output_watermark(self, computation: str) -> int:
        """What ``computation`` promises downstream: min(input watermark, pending event timers)."""
        self._settle()
        self._running(computation)
        return self._out_watermarks[computation]

    def stats(self, computation: str) -> dict[str, int]:
        """The task counters of ``computation`` summed (processed, duplicates, late, ...)."""
        self._settle()
        total: dict[str, int] = {}
        for task in self._running(computation):
            for k, v in task.stats().items():
                total[k] = total.get(k, 0) + v
        return total

    def _settle(self) -> None:
        if not self._failed:
            self.run()

    def _stream(self, stream: str) -> Stream:
        try:
            return self.pipeline.streams[stream]
        except KeyError:
            raise KwheelError(
                f"driver: unknown stream {stream!r} (declared: {', '.join(self.pipeline.streams)})"
            ) from None

    def _running(self, computation: str) -> list[Task]:
        try:
            return self._tasks[computation]
        except KeyError:
            raise KwheelError(
                f"driver: computation {computation!r} is not running here "
                f"(running: {', '.join(self.computations)})"
            ) from None

    # ---- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        for tasks in self._tasks.values():
            for task in tasks:
                task.close()
        self._tasks = {}
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> PipelineDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
