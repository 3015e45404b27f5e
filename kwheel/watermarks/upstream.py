"""What watermark a task may use: the min over every producer that feeds it.

A producer's watermark W is usable by a task only once the task has consumed, on each of
its input partitions, up to the end offsets W's control record names: then every record
the producer wrote before computing W has been read, and anything it writes later is at or
after W (or late). Pure logic, driven by the worker with positions and a WatermarkTable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..pipeline import Pipeline
from . import MAX_WATERMARK, MIN_WATERMARK
from .control import INJECTOR, TASK, Control, task_producer_id

LEVEL = 32  # controls per level of a producer's history (see WatermarkTable)


class WatermarkTable:
    """What every producer published, as read from the watermark topic, in topic order.

    Ownership: a task's new owner announces itself (an incarnation number and a token of
    its own) before it touches the task. From then on readers keep only the task's controls
    that carry that pair: one written by an older owner comes from a zombie (a process
    that lost the task but does not know yet) whose state is stale, and one carrying
    another token comes from an opening that lost a race for the same number. An
    announcement carries no watermark: the new owner has not published anything it covers.

    History: a control's watermark is usable by a reader only once the reader has consumed
    past the control's positions, so a reader that lags needs older controls. Consecutive
    controls with the same positions collapse into the newest (a heartbeat adds nothing
    a reader would wait for). The rest is kept as an exponential histogram: LEVEL controls
    a level, and when a level overflows its two oldest controls leave it, the newer of
    them moving up a level. Level j spans about 2**j controls per entry, so a producer's
    history is O(LEVEL log n) controls long and a reader however far behind finds one not
    far ahead of it (docs/architecture.md).

    Operations (docs/operations.md): a task's reset (``kwheel reset``) makes readers forget
    what the task published, since it starts over from its inputs' start; a retired
    injector instance (``kwheel injector retire``) counts as finished at the positions its
    retirement names, and whatever it publishes later is ignored, so coming back (or a
    zombie of it) cannot take the stream's watermark back.
    """

    def __init__(self, keeps_history: Callable[[Control], bool] | None = None) -> None:
        # whose history to keep (a worker: the producers feeding its tasks); of the others,
        # the newest control only (status, ownership and what they published need no more)
        self._keeps_history = keeps_history
        self.entries: dict[str, list[Control]] = {}  # producer -> kept controls, oldest first
        self._levels: dict[str, list[list[Control]]] = {}  # producer -> levels, the newest first
        self.announcements: dict[str, Control] = {}  # task -> its owner's announcement
        self._newest: dict[
            str, int
        ] = {}  # task -> the highest incarnation any of its records named
        self._top: dict[str, int] = {}  # producer -> highest watermark it published
        self.retired: dict[str, Control] = {}  # injector -> its retirement (kwheel injector retire)

    def add(self, c: Control) -> bool:
        """Take in the next control of the topic; True if it was kept as a watermark."""
        pid = c.producer
        if c.kind == TASK:
            if c.incarnation > self._newest.get(pid, 0):
                self._newest[pid] = c.incarnation
            owner = self.owner(pid)
            if c.reset:
                # `kwheel reset`: the task starts over from its inputs' start, so nothing it
                # published before holds. Its (incarnation, token) owns the task until the
                # next opener announces itself: a zombie's controls are dropped.
                self._forget(pid)
                if owner is None or c.incarnation >= owner[0]:
                    self.announcements[pid] = c
                return False
            if c.announce:
                if owner is None or c.incarnation >= owner[0]:
                    self.announcements[pid] = c
                return False
            if owner is not None and (c.incarnation, c.owner) != owner:
                return False
        elif pid in self.retired:
            return False  # a retired instance that came back, or its zombie: ignored
        elif c.retired:
            self.retired[pid] = c
        if self._keeps_history is not None and not self._keeps_history(c):
            self.entries[pid] = [c]
        else:
            self._keep(pid, c)
        if c.watermark > self._top.get(pid, MIN_WATERMARK):
            self._top[pid] = c.watermark
        return True

    def _forget(self, pid: str) -> None:
        self.entries.pop(pid, None)
        self._levels.pop(pid, None)
        self._top.pop(pid, None)

    def _keep(self, pid: str, c: Control) -> None:
        levels = self._levels.setdefault(pid, [[]])
        newest = levels[0]
        if newest and newest[-1].positions == c.positions:
            newest[-1] = c
            self.entries[pid][-1] = c
        else:
            newest.append(c)
            j = 0
            while len(levels[j]) > LEVEL:
                del levels[j][0]
                if j + 1 == len(levels):
                    levels.append([])
                levels[j + 1].append(levels[j].pop(0))
                j += 1
            self.entries[pid] = [c for level in reversed(levels) for c in level]

    def latest(self, producer: str) -> Control | None:
        hist = self.entries.get(producer)
        return hist[-1] if hist else None

    def published(self, producer: str) -> int:
        """The highest watermark the producer published (a new owner resumes at or above it)."""
        return self._top.get(producer, MIN_WATERMARK)

    def owner(self, producer: str) -> tuple[int, str] | None:
        """(incarnation, token) of the task's last announced owner; None if none announced."""
        a = self.announcements.get(producer)
        return (a.incarnation, a.owner) if a is not None else None

    def incarnation(self, producer: str) -> int:
        """The newest incarnation of a task any record named (0 when none): an opener takes
        the next one, so it fences every id used before, also one that only controls of
        an older kwheel (without announcements) name."""
        return self._newest.get(producer, 0)

    def injectors_of(self, stream: str) -> list[str]:
        return [
            p
            for p, hist in self.entries.items()
            if hist and hist[-1].kind == INJECTOR and stream in hist[-1].streams
        ]


@dataclass(frozen=True)
class _Feed:
    stream: str
    tasks: tuple[str, ...]  # producer ids of computation tasks that write the stream
    injected: bool  # a source stream: injector processes feed it


def feeding(pipeline: Pipeline, computations: list[str]) -> Callable[[Control], bool]:
    """Whether a control comes from a producer feeding one of ``computations``."""
    feeds = [f for c in computations for f in Upstream(pipeline, c, 0).feeds]
    tasks = {pid for f in feeds for pid in f.tasks}
    injected = {f.stream for f in feeds if f.injected}
    return lambda c: (
        c.producer in tasks or (c.kind == INJECTOR and not injected.isdisjoint(c.streams))
    )


class Upstream:
    """The producers feeding one task, and the watermark each has made usable to it."""

    def __init__(self, pipeline: Pipeline, computation: str, partition: int):
        self.partition = partition
        self.input_topics = {ti.topic for ti in pipeline.task_inputs(computation)}
        feeds = []
        for i in pipeline.computations[computation].inputs:
            stream = pipeline.feed_stream(computation, i)
            tasks = tuple(
                task_producer_id(c.name, p)
                for c in pipeline.computations.values()
                if stream in c.outputs or c.dead_letter == stream
                for p in range(c.partitions)
            )
            feeds.append(_Feed(stream, tasks, pipeline.streams[stream].source))
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

    def rewound(self) -> None:
        """The task went back to earlier positions (an abort): what they made usable is not."""
        self.usable.clear()

    def _usable(self, pid: str, table: WatermarkTable, consumed: Callable[[str], int]) -> int:
        """The watermark of the newest control of ``pid`` whose positions this task passed."""
        best = self.usable.get(pid, MIN_WATERMARK)
        hist = table.entries.get(pid)
        if hist and _value(hist[-1]) > best:
            partition, topics = self.partition, self.input_topics

            def passed(c: Control) -> bool:
                return all(
                    consumed(t) >= o for t, p, o in c.positions if p == partition and t in topics
                )

            # Positions never go down along a producer's history, so the controls this task
            # passed are a prefix of it: find its end by bisection (newest first, the usual
            # case when caught up). Only a control checked as passed is ever used.
            if passed(hist[-1]):
                best = max(best, _value(hist[-1]))
            else:
                lo, hi = -1, len(hist) - 2
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if passed(hist[mid]):
                        lo = mid
                    else:
                        hi = mid - 1
                if lo >= 0:
                    best = max(best, _value(hist[lo]))
        self.usable[pid] = best
        return best


def _value(c: Control) -> int:
    return MAX_WATERMARK if c.final else c.watermark
