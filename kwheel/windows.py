"""Windowed aggregation on event time, built on timers and per-key state.

A ``WindowedAggregation`` does what every windowed computation otherwise hand-writes:
assign each record to its windows, keep one accumulator per key and window in the key's
state, emit when the low watermark says the window is complete, accept late records for a
while (and re-emit), then forget the window. Subclasses only say *what* to aggregate::

    class Clicks(WindowedAggregation):
        windows = Tumbling(60_000, allowed_lateness_ms=10_000)

        def initial(self):
            return 0

        def add(self, acc, record):
            return acc + 1

        def emit(self, ctx, window, acc):
            ctx.produce("clicks", ctx.key, {"user": ctx.key, "start": window.start, "n": acc})

Everything lives in the task's state and timers, so results are exactly-once like any other
output: a window fires in the same transaction that deletes its timer.

Semantics (``W`` is the task's input low watermark, ``L`` the allowed lateness):

- A window ``[start, end)`` is complete once ``W >= fires_at`` (``end``; ``end + 1`` for
  sessions, see ``Session``). An event-time timer at ``fires_at`` emits it then.
- Its state is kept until ``W >= fires_at + L`` (the same timer, moved there). A record for
  it that arrives after it fired but before that (a late record within allowed lateness)
  updates the accumulator and is emitted again at once (a "late firing").
- A record that finds every one of its windows past ``fires_at + L`` goes to ``late()``.

The pure parts (assignment, session merging, tags) are module-level functions and methods
without a context, so they can be tested on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from .computation import Computation, Context

if TYPE_CHECKING:
    from .record import Key, Record, Timer

Acc = TypeVar("Acc")

#: prefix of the state names and timer tags of windows (``kwheel.window/<start>/<end>``)
WINDOW_PREFIX = "kwheel.window/"
#: state name of a key's list of session windows (sessions must be found to be merged)
SESSIONS = "kwheel.sessions"
#: what is stored under SESSIONS: the (start, end) of each session, in start order
SessionIndex = tuple[tuple[int, int], ...]


@dataclass(frozen=True, order=True, slots=True)
class Window:
    """The event-time interval ``[start, end)`` in ms (start inclusive, end exclusive)."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"a window needs start < end, got [{self.start}, {self.end})")

    def contains(self, timestamp: int) -> bool:
        return self.start <= timestamp < self.end

    def touches(self, other: Window) -> bool:
        """Overlapping or adjacent (``[0, 5)`` touches ``[5, 9)``): such sessions merge."""
        return self.start <= other.end and other.start <= self.end

    def cover(self, other: Window) -> Window:
        """The smallest window holding both."""
        return Window(min(self.start, other.start), max(self.end, other.end))

    @property
    def tag(self) -> str:
        """Its state name and timer tag: a deterministic string, the same on every replay."""
        return f"{WINDOW_PREFIX}{self.start}/{self.end}"

    @staticmethod
    def from_tag(tag: str) -> Window | None:
        """The window a tag names, or None if the tag is not a window's."""
        if not tag.startswith(WINDOW_PREFIX):
            return None
        start, _, end = tag[len(WINDOW_PREFIX) :].partition("/")
        try:
            return Window(int(start), int(end))
        except ValueError:
            return None


def _check_ms(what: str, value: object, positive: bool = True) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < (1 if positive else 0):
        need = "a positive" if positive else "a non-negative"
        raise ValueError(f"{what} must be {need} integer (ms), got {value!r}")


class WindowAssigner:
    """Which windows a record belongs to, and how long they wait for late data.

    Subclasses are frozen dataclasses with an ``allowed_lateness_ms`` field: how long after
    a window fired its state is kept for late records (ms)."""

    __slots__ = ()
    allowed_lateness_ms: int
    #: sessions merge: their windows are not fixed by the timestamp alone
    merging: ClassVar[bool] = False

    def assign(self, timestamp: int) -> list[Window]:
        """The windows a record with this timestamp belongs to, in start order."""
        raise NotImplementedError

    def fires_at(self, window: Window) -> int:
        """The watermark at which no on-time record can still change ``window``."""
        return window.end

    def closes_at(self, window: Window) -> int:
        """The watermark at which the window's state is dropped: later records are too late."""
        return self.fires_at(window) + self.allowed_lateness_ms


@dataclass(frozen=True, slots=True)
class Tumbling(WindowAssigner):
    """Fixed, non-overlapping windows ``[k*size, (k+1)*size)``, aligned to the epoch."""

    size_ms: int
    allowed_lateness_ms: int = 0

    def __post_init__(self) -> None:
        _check_ms("Tumbling: size_ms", self.size_ms)
        _check_ms("Tumbling: allowed_lateness_ms", self.allowed_lateness_ms, positive=False)

    def assign(self, timestamp: int) -> list[Window]:
        start = timestamp - timestamp % self.size_ms  # floor, also for negative timestamps
        return [Window(start, start + self.size_ms)]


@dataclass(frozen=True, slots=True)
class Sliding(WindowAssigner):
    """Windows of ``size_ms`` starting every ``slide_ms`` (aligned to the epoch): a record is
    in ``size/slide`` of them (rounded up or down when slide does not divide size). With
    ``slide > size`` there are gaps, and a record that falls in one belongs to no window (it
    is ignored, not late)."""

    size_ms: int
    slide_ms: int
    allowed_lateness_ms: int = 0

    def __post_init__(self) -> None:
        _check_ms("Sliding: size_ms", self.size_ms)
        _check_ms("Sliding: slide_ms", self.slide_ms)
        _check_ms("Sliding: allowed_lateness_ms", self.allowed_lateness_ms, positive=False)

    def assign(self, timestamp: int) -> list[Window]:
        start = timestamp - timestamp % self.slide_ms  # the latest start at or before timestamp
        out = []
        while start > timestamp - self.size_ms:
            out.append(Window(start, start + self.size_ms))
            start -= self.slide_ms
        out.reverse()
        return out


@dataclass(frozen=True, slots=True)
class Session(WindowAssigner):
    """Per-key bursts of activity: a record at ``t`` opens ``[t, t + gap)``, merged with every
    session of the key it overlaps or touches. Two records at most ``gap_ms`` apart are
    therefore in the same session.

    Because touching sessions merge, a record at exactly ``end`` still extends the session
    ``[start, end)``, and it is on time while ``W == end``. So a session is complete only
    once ``W >= end + 1``: that is its ``fires_at``.
    """

    gap_ms: int
    allowed_lateness_ms: int = 0
    merging: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_ms("Session: gap_ms", self.gap_ms)
        _check_ms("Session: allowed_lateness_ms", self.allowed_lateness_ms, positive=False)

    def assign(self, timestamp: int) -> list[Window]:
        return [Window(timestamp, timestamp + self.gap_ms)]

    def fires_at(self, window: Window) -> int:
        return window.end + 1


def merge_sessions(
    sessions: list[Window] | tuple[Window, ...], new: Window
) -> tuple[Window, list[Window]]:
    """Merge ``new`` into a key's ``sessions``: returns the merged window and the sessions it
    absorbs (in start order; they touch it, directly or through each other). Sessions not
    returned are unchanged. Pure: the caller moves state and timers."""
    merged = new
    absorbed: list[Window] = []
    rest = sorted(sessions)
    changed = True
    while changed:  # a fixed point, so it holds even for sessions that touch each other
        changed = False
        keep = []
        for s in rest:
            if s.touches(merged):
                merged = merged.cover(s)
                absorbed.append(s)
                changed = True
            else:
                keep.append(s)
        rest = keep
    absorbed.sort()
    return merged, absorbed


class _EmitContext:
    """The context handed to ``emit``: ``produce`` defaults to the window's firing time.

    That time (``fires_at``) is the earliest the task's published watermark can be past the
    window, because the pending timer held it there; so an on-time result is never late
    downstream, whether it is emitted by the timer or by a record."""

    __slots__ = ("_ctx", "_ts")

    def __init__(self, ctx: Context, timestamp: int):
        self._ctx = ctx
        self._ts = timestamp

    def produce(self, stream: str, key: Key, value: object, timestamp: int | None = None) -> None:
        self._ctx.produce(stream, key, value, self._ts if timestamp is None else timestamp)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


class WindowedAggregation(Computation, Generic[Acc]):
    """A computation that aggregates each key's records per event-time window.

    Set ``windows`` (a ``Tumbling``, ``Sliding`` or ``Session``) and override ``initial``,
    ``add`` and ``emit``; for sessions also ``merge``; optionally ``late``. Accumulators are
    stored in the key's state, so they must be picklable; they are assigned back after every
    ``add``, so ``add`` may return a new value or the mutated one.

    State names and timer tags starting with ``kwheel.window/`` (and the state name
    ``kwheel.sessions``) belong to this class. To use timers of your own, override
    ``process_timer`` and pass timers whose tag starts with ``kwheel.window/`` to
    ``super().process_timer``.
    """

    windows: ClassVar[WindowAssigner]

    # ---- what subclasses override ------------------------------------------------------------
    def initial(self) -> Acc:
        """The accumulator of an empty window."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement initial(self) -> accumulator"
        )

    def add(self, acc: Acc, record: Record) -> Acc:
        """The accumulator with ``record`` added."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement add(self, acc, record) -> accumulator"
        )

    def emit(self, ctx: Context, window: Window, acc: Acc) -> None:
        """Publish a window's result, typically with ``ctx.produce``. Called when the window
        becomes complete, and again after each late record within allowed lateness."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement emit(self, ctx, window, acc)"
        )

    def merge(self, a: Acc, b: Acc) -> Acc:
        """The accumulator of two sessions that merged (``a`` is the earlier one)."""
        raise NotImplementedError(
            f"{type(self).__name__} uses session windows, which merge: a record can join two sessions "
            f"of a key into one, and their accumulators must then be combined. Implement "
            f"merge(self, a, b) -> accumulator in {type(self).__name__}."
        )

    def late(self, ctx: Context, record: Record) -> None:
        """A record too late even for allowed lateness: all its windows were dropped.

        The task already counts it as late (``record.late``); by default it is ignored. Override
        to send it to a side stream. Must not raise, or the task stops on the record."""

    # ---- the machinery -------------------------------------------------------------------------
    def _assigner(self) -> WindowAssigner:
        w = getattr(self, "windows", None)
        if not isinstance(w, WindowAssigner):
            raise TypeError(
                f"{type(self).__name__}.windows must be Tumbling(...), Sliding(...) or Session(...), "
                f"got {w!r}"
            )
        return w

    def process_record(self, ctx: Context, record: Record) -> None:
        assigner = self._assigner()
        if assigner.merging:
            self._process_session(ctx, record, assigner)
            return
        wm = ctx.low_watermark
        windows = assigner.assign(record.timestamp)
        taken = False
        for window in windows:
            if wm >= assigner.closes_at(window):
                continue  # dropped (or about to be, by its pending timer): too late for it
            taken = True
            tag = window.tag
            acc: Acc = ctx.state[tag] if tag in ctx.state else self.initial()
            self._update(ctx, assigner, window, self.add(acc, record))
        if windows and not taken:
            self.late(ctx, record)

    def _process_session(self, ctx: Context, record: Record, assigner: WindowAssigner) -> None:
        wm = ctx.low_watermark
        stored: SessionIndex = ctx.state.get(SESSIONS, ())
        index = [Window(s, e) for s, e in stored]
        # sessions past their lateness wait for their timer to drop them; they never merge again
        live = [s for s in index if wm < assigner.closes_at(s)]
        merged, absorbed = merge_sessions(live, assigner.assign(record.timestamp)[0])
        if wm >= assigner.closes_at(merged):
            self.late(ctx, record)
            return
        if absorbed:
            acc: Acc = ctx.state[absorbed[0].tag]
            for s in absorbed[1:]:
                acc = self.merge(acc, ctx.state[s.tag])
        else:
            acc = self.initial()
        acc = self.add(acc, record)
        for s in absorbed:
            if s != merged:
                del ctx.state[s.tag]
                ctx.delete_timer(s.tag)
        rest = [s for s in index if s not in absorbed]
        ctx.state[SESSIONS] = tuple((s.start, s.end) for s in sorted([*rest, merged]))
        self._update(ctx, assigner, merged, acc)

    def _update(self, ctx: Context, assigner: WindowAssigner, window: Window, acc: Acc) -> None:
        """Store a window's new accumulator; emit now if the window already fired."""
        tag = window.tag
        ctx.state[tag] = acc
        fires_at = assigner.fires_at(window)
        if ctx.low_watermark >= fires_at:
            # complete already: a late firing (or the first one, if its timer is still due);
            # the timer moves to the end of lateness, so the window is not emitted twice
            self.emit(_EmitContext(ctx, fires_at), window, acc)
            ctx.set_timer(tag, assigner.closes_at(window))
        else:
            ctx.set_timer(tag, fires_at)

    def process_timer(self, ctx: Context, timer: Timer) -> None:
        window = Window.from_tag(timer.tag)
        if window is None or timer.tag not in ctx.state:
            return  # not a window's timer, or a window already gone
        assigner = self._assigner()
        fires_at = assigner.fires_at(window)
        if timer.timestamp == fires_at:
            self.emit(_EmitContext(ctx, fires_at), window, ctx.state[timer.tag])
            closes_at = assigner.closes_at(window)
            if ctx.low_watermark < closes_at:
                ctx.set_timer(timer.tag, closes_at)  # keep the state for late records
                return
        del ctx.state[timer.tag]
        if assigner.merging:
            stored: SessionIndex = ctx.state.get(SESSIONS, ())
            left = tuple((s, e) for s, e in stored if (s, e) != (window.start, window.end))
            if left:
                ctx.state[SESSIONS] = left
            elif SESSIONS in ctx.state:
                del ctx.state[SESSIONS]


__all__ = [
    "Session",
    "Sliding",
    "Tumbling",
    "Window",
    "WindowAssigner",
    "WindowedAggregation",
    "merge_sessions",
]
