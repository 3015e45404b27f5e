"""The pipeline graph: streams, computations, how they connect, and the Kafka names they map to."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

from . import rekey
from . import serde as serdes
from .computation import Computation
from .errors import PipelineError, SerdeError
from .record import Key, Record

if TYPE_CHECKING:
    from .sources import Source

KeyExtractor = Callable[[Record], Key]

# delete.retention.ms kwheel sets on changelog topics (and requires of existing ones): how
# long compaction keeps a tombstone. A local store older than a safe fraction of this is
# rebuilt (kwheel.state.restore.STALE_AFTER_MS), so it cannot miss a deleted key, timer or id.
CHANGELOG_DELETE_RETENTION_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Stream:
    """A named, key-partitioned stream of records: one Kafka topic."""

    name: str
    topic: str
    partitions: int
    key_serde: serdes.Serde
    value_serde: serdes.Serde
    source: bool  # fed from outside the pipeline (injectors, other systems)


@dataclass(frozen=True)
class Input:
    """One input of a computation. ``key_by`` picks the computation's key from a record.

    Without ``key_by`` the record's own key is used and the stream is read directly; with
    it, producers also write the re-keyed record to a repartition topic that this
    computation reads instead, so every key lands in exactly one task.
    """

    stream: str
    key_by: KeyExtractor | None = None


@dataclass
class ComputationSpec:
    name: str
    factory: Callable[[], Computation]
    inputs: list[Input]
    outputs: list[str]
    dead_letter: str | None
    partitions: int = 0  # resolved by validate()
    feeds: str | None = None  # a re-keying stage kwheel added for this computation (rekey.py)


@dataclass
class InjectorSpec:
    """An injector declared in the pipeline: ``kwheel inject module:pipeline NAME`` runs it."""

    name: str
    source: Callable[[], Source]  # a zero-argument factory of a kwheel.sources.Source
    outputs: list[str]
    disorder_ms: int  # bounded disorder: the watermark trails the newest timestamp by this


@dataclass(frozen=True)
class Route:
    """Where a record produced to a stream is written: the topic, and how its key is chosen."""

    topic: str
    key_by: KeyExtractor | None  # None: the producer's key


@dataclass(frozen=True)
class TaskInput:
    """A topic a computation consumes and the stream it came from."""

    topic: str
    stream: Stream
    repartitioned: bool


@dataclass
class Pipeline:
    """A directed graph of computations joined by named streams.

    Topic names are prefixed with the pipeline name unless a stream gives its own topic.
    """

    name: str
    streams: dict[str, Stream] = field(default_factory=dict)
    computations: dict[str, ComputationSpec] = field(default_factory=dict)
    injectors: dict[str, InjectorSpec] = field(default_factory=dict)

    # ---- building -----------------------------------------------------------------
    def stream(
        self,
        name: str,
        partitions: int = 1,
        value: serdes.Serde | str = "json",
        key: serdes.Serde | str = "str",
        topic: str | None = None,
        source: bool = False,
    ) -> Stream:
        """Declare a stream. ``source=True`` marks one that is fed from outside the pipeline."""
        if name in self.streams:
            raise PipelineError(f"pipeline {self.name!r}: stream {name!r} declared twice")
        if not _positive_int(partitions):
            raise PipelineError(
                f"stream {name!r}: partitions must be a positive integer, got {partitions!r}"
            )
        try:
            t = topic or f"{self.name}.{name}"
            s = Stream(
                name,
                t,
                partitions,
                serdes.for_topic(serdes.resolve(key), t, "key"),
                serdes.for_topic(serdes.resolve(value), t, "value"),
                source,
            )
        except SerdeError as e:
            raise PipelineError(f"stream {name!r}: {e}") from None
        self.streams[name] = s
        return s

    def computation(
        self,
        name: str,
        computation: type[Computation] | Callable[[], Computation],
        inputs: Iterable[str | Input],
        outputs: Iterable[str] = (),
        dead_letter: str | None = None,
        partitions: int | None = None,
    ) -> ComputationSpec:
        """Add a computation. ``computation`` is a Computation subclass or a zero-argument factory."""
        if name in self.computations:
            raise PipelineError(f"pipeline {self.name!r}: computation {name!r} declared twice")
        if partitions is not None and not _positive_int(partitions):
            raise PipelineError(
                f"computation {name!r}: partitions must be a positive integer, got {partitions!r}"
            )
        ins = [i if isinstance(i, Input) else Input(i) for i in inputs]
        spec = ComputationSpec(name, computation, ins, list(outputs), dead_letter, partitions or 0)
        self.computations[name] = spec
        return spec

    def injector(
        self, name: str, source: Callable[[], Source], outputs: Iterable[str], disorder_ms: int = 0
    ) -> InjectorSpec:
        """Declare an injector writing ``outputs`` (which become source streams).

        ``source`` builds the injector's Source in each injector process (see kwheel.sources);
        ``disorder_ms`` bounds how far out of timestamp order its records may arrive.
        """
        if name in self.injectors:
            raise PipelineError(f"pipeline {self.name!r}: injector {name!r} declared twice")
        if not callable(source):
            raise PipelineError(
                f"injector {name!r}: source must be a Source class or factory, got {source!r}"
            )
        if not isinstance(disorder_ms, int) or isinstance(disorder_ms, bool) or disorder_ms < 0:
            raise PipelineError(
                f"injector {name!r}: disorder_ms must be a non-negative integer, got {disorder_ms!r}"
            )
        outs = list(outputs)
        if not outs:
            raise PipelineError(f"injector {name!r} has no outputs")
        for o in outs:
            self._known(o, f"injector {name!r} writes")
            self.streams[o] = replace(self.streams[o], source=True)
        spec = InjectorSpec(name, source, outs, disorder_ms)
        self.injectors[name] = spec
        return spec

    # ---- validation ------------------------------------------------------------------
    def validate(self) -> Pipeline:
        """Check the graph; raise one PipelineError naming the first problem found."""
        if not self.computations:
            raise PipelineError(f"pipeline {self.name!r} has no computations")
        produced = {n for n, s in self.streams.items() if s.source}
        for c in self.computations.values():
            if not c.inputs:
                raise PipelineError(f"computation {c.name!r} has no inputs")
            if not callable(c.factory):
                raise PipelineError(
                    f"computation {c.name!r}: {c.factory!r} is not a Computation class or factory"
                )
            for i in c.inputs:
                self._known(i.stream, f"computation {c.name!r} reads")
            for o in c.outputs:
                self._known(o, f"computation {c.name!r} writes")
            if c.dead_letter:
                self._known(c.dead_letter, f"computation {c.name!r} dead-letters to")
            produced.update(c.outputs)
            if c.dead_letter:
                produced.add(c.dead_letter)
        for c in self.computations.values():
            for i in c.inputs:
                if i.stream not in produced:
                    raise PipelineError(
                        f"stream {i.stream!r} (read by computation {c.name!r}) has no producer: "
                        f"no computation outputs it and it is not declared source=True"
                    )
            direct = {self.streams[i.stream].partitions for i in c.inputs if i.key_by is None}
            if len(direct) > 1:
                counts = ", ".join(
                    f"{i.stream}={self.streams[i.stream].partitions}"
                    for i in c.inputs
                    if i.key_by is None
                )
                raise PipelineError(
                    f"computation {c.name!r}: inputs have mismatched partition counts ({counts}); "
                    f"co-partitioned inputs must match, or re-key one with key_by"
                )
            if direct:
                n = direct.pop()
                if c.partitions and c.partitions != n:
                    raise PipelineError(
                        f"computation {c.name!r}: partitions={c.partitions} but its inputs have {n} partitions"
                    )
                c.partitions = n
            elif not c.partitions:
                c.partitions = max(self.streams[i.stream].partitions for i in c.inputs)
        self._add_rekeying_stages()
        return self

    def _add_rekeying_stages(self) -> None:
        """A re-keyed source stream reaches its computation through a stage of its own
        (kwheel/rekey.py); the stage's output is an internal stream on the repartition topic."""
        for c in list(self.computations.values()):
            for i in c.inputs:
                s = self.streams[i.stream]
                name = rekey.stage_name(c.name, s.name)
                if i.key_by is None or not s.source or name in self.computations:
                    continue
                self.streams[name] = Stream(
                    name,
                    self.repartition_topic(c.name, s.name),
                    c.partitions,
                    rekey.TagSerde(),
                    s.value_serde,
                    False,
                )
                self.computations[name] = ComputationSpec(
                    name,
                    partial(rekey.Rekey, i.key_by, name),
                    [Input(s.name)],
                    [name],
                    c.dead_letter,
                    s.partitions,
                    feeds=c.name,
                )

    def feed_stream(self, computation: str, i: Input) -> str:
        """The stream whose producers feed input ``i``: the re-keying stage's for a re-keyed
        source stream, else the stream itself."""
        name = rekey.stage_name(computation, i.stream)
        return name if i.key_by is not None and name in self.streams else i.stream

    def _known(self, stream: str, what: str) -> None:
        if stream not in self.streams:
            known = ", ".join(sorted(self.streams)) or "none"
            raise PipelineError(f"{what} unknown stream {stream!r} (declared streams: {known})")

    # ---- Kafka names -----------------------------------------------------------------
    def watermark_topic(self) -> str:
        return f"{self.name}.watermarks"

    def group_id(self, computation: str) -> str:
        return f"{self.name}.{computation}"

    def changelog_topic(self, computation: str) -> str:
        return f"{self.name}.{computation}.changelog"

    def repartition_topic(self, computation: str, stream: str) -> str:
        return f"{self.name}.{computation}.{stream}.repartition"

    def transactional_id(self, computation: str, partition: int) -> str:
        return f"{self.name}.{computation}.{partition}"

    def task_inputs(self, computation: str) -> list[TaskInput]:
        """The topics a computation consumes (repartition topics for re-keyed inputs)."""
        c = self.computations[computation]
        out = []
        for i in c.inputs:
            s = self.streams[i.stream]
            if i.key_by is None:
                out.append(TaskInput(s.topic, s, False))
            else:
                out.append(TaskInput(self.repartition_topic(c.name, s.name), s, True))
        return out

    def routes(self, stream: str) -> list[Route]:
        """Every topic a record produced to ``stream`` goes to: the stream and its repartitions."""
        s = self.streams[stream]
        routes = [Route(s.topic, None)]
        for c in self.computations.values():
            for i in c.inputs:
                if i.stream == stream and i.key_by is not None and not s.source:  # source: rekey.py
                    routes.append(Route(self.repartition_topic(c.name, stream), i.key_by))
        return routes

    def topics(self) -> dict[str, tuple[int, dict[str, str]]]:
        """Every topic the pipeline needs: name -> (partitions, topic config)."""
        self.validate()
        need: dict[str, tuple[int, dict[str, str]]] = {}
        for s in self.streams.values():
            need[s.topic] = (s.partitions, {})
        need[self.watermark_topic()] = (1, {"cleanup.policy": "compact"})
        for c in self.computations.values():
            need[self.changelog_topic(c.name)] = (
                c.partitions,
                {
                    "cleanup.policy": "compact",
                    "delete.retention.ms": str(CHANGELOG_DELETE_RETENTION_MS),
                },
            )
            for ti in self.task_inputs(c.name):
                if ti.repartitioned:
                    need[ti.topic] = (c.partitions, {})
        return need


def _positive_int(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1
