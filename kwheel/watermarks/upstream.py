"""What watermark a task may use: the min over every producer that feeds it.

A producer's watermark W is usable by a task only once the task has consumed, on each of
its input partitions, up to the end offsets W's control record names: then every record
the producer wrote before computing W has been read, and anything it writes later is at or
after W (or late). Pure logic, driven by the worker with positions and a WatermarkTable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..pipeline import Pipeline
from . import MAX_WATERMARK, MIN_WATERMARK
from .control import INJECTOR, TASK, Control, task_producer_id

HISTORY = 64  # control records kept per producer for position checks


class WatermarkTable:
    """The recent control records of every producer, as read from the watermark topic.

    A task's new owner announces its incarnation on the topic before it touches the task.
    A control written after that by an older incarnation comes from a zombie: a process
    that lost the task but does not know yet. Its state is stale, so its watermark may
    pass timers the new owner has set since; every reader drops it (``add`` says so).
    """

    def __init__(self) -> None:
        self.entries: dict[str, deque[Control]] = {}

    def add(self, c: Control) -> bool:
        """Keep ``c``, unless a newer incarnation of its producer was announced before it."""
        if c.incarnation < self.incarnation(c.producer):
            return False
        floor = self.published(c.producer)
        if c.kind == TASK and c.watermark < floor:
            # a task never goes below what it published: a new owner's announcement may be
            # computed before it read its predecessor's last control
            c = replace(c, watermark=floor)
        dq = self.entries.get(c.producer)
        if dq is None:
            dq = self.entries[c.producer] = deque(maxlen=HISTORY)
        dq.append(c)
        return True

    def latest(self, producer: str) -> Control | None:
        dq = self.entries.get(producer)
        return dq[-1] if dq else None

    def published(self, producer: str) -> int:
        """The highest watermark the producer ever published (kept monotonic on restart)."""
        dq = self.entries.get(producer)
        return max((c.watermark for c in dq), default=MIN_WATERMARK) if dq else MIN_WATERMARK

    def incarnation(self, producer: str) -> int:
        """The newest incarnation a task announced (0 when none): the latest kept record's,
        since ``add`` keeps incarnations from going down."""
        dq = self.entries.get(producer)
        return dq[-1].incarnation if dq else 0

    def injectors_of(self, stream: str) -> list[str]:
        return [p for p, dq in self.entries.items() if dq and dq[-1].kind == INJECTOR and stream in dq[-1].streams]


@dataclass(frozen=True)
class _Feed:
    stream: str
    tasks: tuple[str, ...]  # producer ids of computation tasks that write the stream
    injected: bool  # a source stream: injector processes feed it


class Upstream:
    """The producers feeding one task, and the watermark each has made usable to it."""

    def __init__(self, pipeline: Pipeline, computation: str, partition: int):
        self.partition = partition
        self.input_topics = {ti.topic for ti in pipeline.task_inputs(computation)}
        feeds = []
        for i in pipeline.computations[computation].inputs:
            tasks = tuple(
                task_producer_id(c.name, p)
                for c in pipeline.computations.values()
                if i.stream in c.outputs or c.dead_letter == i.stream
                for p in range(c.partitions)
            )
            feeds.append(_Feed(i.stream, tasks, pipeline.streams[i.stream].source))
        self.feeds = feeds
        self.usable: dict[str, int] = {}

    def watermark(self, table: WatermarkTable, consumed: Callable[[str], int]) -> int:
        """min over producers of their usable watermark; MIN_WATERMARK while one is unknown."""
        w = MAX_WATERMARK
        for feed in self.feeds:
            for pid in feed.tasks:
                w = min(w, self._usable(pid, table, consumed))
            if feed.injected:
                injectors = table.injectors_of(feed.stream)
                if not injectors:
                    return MIN_WATERMARK
                for pid in injectors:
                    w = min(w, self._usable(pid, table, consumed))
        return w

    def _usable(self, pid: str, table: WatermarkTable, consumed: Callable[[str], int]) -> int:
        best = self.usable.get(pid, MIN_WATERMARK)
        dq = table.entries.get(pid)
        if dq:
            for c in reversed(dq):  # newest first: the first one whose positions we passed
                w = MAX_WATERMARK if c.final else c.watermark
                if w <= best:
                    break
                if all(consumed(t) >= o for t, p, o in c.positions if p == self.partition and t in self.input_topics):
                    best = w
                    break
        self.usable[pid] = best
        return best
