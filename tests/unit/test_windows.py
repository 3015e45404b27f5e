"""Windowed aggregation: window assignment, session merging, and the timer/state machine of
WindowedAggregation driven by a fake context (no broker)."""

from __future__ import annotations

import random

import pytest

from kwheel import Session, Sliding, Tumbling, Window, WindowedAggregation
from kwheel.record import Record, Timer
from kwheel.watermarks import MAX_WATERMARK, MIN_WATERMARK
from kwheel.windows import SESSIONS, merge_sessions

# ---- Window ------------------------------------------------------------------------------------


def test_window_is_half_open_and_ordered():
    w = Window(10, 20)
    assert w.contains(10) and w.contains(19) and not w.contains(20) and not w.contains(9)
    assert sorted([Window(5, 9), Window(0, 30), Window(0, 4)]) == [
        Window(0, 4),
        Window(0, 30),
        Window(5, 9),
    ]
    with pytest.raises(ValueError):
        Window(5, 5)


def test_window_tags_are_deterministic_and_round_trip():
    for w in (Window(0, 1000), Window(-2000, -1000), Window(1_700_000_000_000, 1_700_000_060_000)):
        assert w.tag == f"kwheel.window/{w.start}/{w.end}"
        assert Window.from_tag(w.tag) == w
    assert Window.from_tag("mine") is None
    assert Window.from_tag("kwheel.window/x/1") is None


def test_touching_means_overlapping_or_adjacent():
    assert Window(0, 5).touches(Window(5, 9))
    assert Window(5, 9).touches(Window(0, 5))
    assert Window(0, 10).touches(Window(3, 4))
    assert not Window(0, 5).touches(Window(6, 9))
    assert Window(0, 5).cover(Window(8, 9)) == Window(0, 9)


# ---- assigners -------------------------------------------------------------------------------


def test_tumbling_assigns_the_one_epoch_aligned_window():
    t = Tumbling(1000)
    assert t.assign(0) == [Window(0, 1000)]
    assert t.assign(999) == [Window(0, 1000)]
    assert t.assign(1000) == [Window(1000, 2000)]
    assert t.assign(-1) == [Window(-1000, 0)]
    assert t.fires_at(Window(0, 1000)) == 1000
    assert t.closes_at(Window(0, 1000)) == 1000
    assert Tumbling(1000, allowed_lateness_ms=500).closes_at(Window(0, 1000)) == 1500


def test_sliding_assigns_every_window_holding_the_timestamp():
    s = Sliding(1000, 250)
    assert s.assign(1100) == [
        Window(250, 1250),
        Window(500, 1500),
        Window(750, 1750),
        Window(1000, 2000),
    ]
    assert s.assign(1000) == [
        Window(250, 1250),
        Window(500, 1500),
        Window(750, 1750),
        Window(1000, 2000),
    ]
    assert s.assign(999) == [
        Window(0, 1000),
        Window(250, 1250),
        Window(500, 1500),
        Window(750, 1750),
    ]
    # a slide that does not divide the size: 3 or 4 windows
    assert [len(Sliding(1000, 300).assign(t)) for t in (0, 100, 950)] == [4, 3, 4]
    # a slide larger than the size leaves gaps
    assert Sliding(100, 1000).assign(50) == [Window(0, 100)]
    assert Sliding(100, 1000).assign(150) == []


def test_sliding_assignment_matches_brute_force():
    rng = random.Random(3)
    for _ in range(300):
        size, slide = rng.randint(1, 50), rng.randint(1, 50)
        t = rng.randint(-500, 500)
        expected = [
            Window(k * slide, k * slide + size)
            for k in range(-1000, 1000)
            if k * slide <= t < k * slide + size
        ]
        assert Sliding(size, slide).assign(t) == expected, (size, slide, t)


def test_session_opens_a_gap_long_window_that_fires_one_ms_after_its_end():
    s = Session(500, allowed_lateness_ms=100)
    assert s.assign(1234) == [Window(1234, 1734)]
    assert s.fires_at(Window(1234, 1734)) == 1735  # a record at exactly 1734 still extends it
    assert s.closes_at(Window(1234, 1734)) == 1835
    assert s.merging and not Tumbling(5).merging and not Sliding(5, 1).merging


@pytest.mark.parametrize(
    "make",
    [
        lambda: Tumbling(0),
        lambda: Tumbling(-5),
        lambda: Tumbling(1.5),
        lambda: Sliding(10, 0),
        lambda: Session(0),
        lambda: Session(10, allowed_lateness_ms=-1),
        lambda: Tumbling(True),
    ],
)
def test_bad_sizes_are_rejected(make):
    with pytest.raises(ValueError, match="integer"):
        make()


# ---- session merging -------------------------------------------------------------------------


def test_merge_into_nothing_is_the_new_window():
    assert merge_sessions([], Window(0, 10)) == (Window(0, 10), [])


def test_merge_absorbs_overlapping_and_adjacent_sessions_only():
    sessions = [Window(0, 10), Window(20, 30), Window(40, 50)]
    assert merge_sessions(sessions, Window(10, 20)) == (
        Window(0, 30),
        [Window(0, 10), Window(20, 30)],
    )
    assert merge_sessions(sessions, Window(25, 35)) == (Window(20, 35), [Window(20, 30)])
    assert merge_sessions(sessions, Window(31, 39)) == (Window(31, 39), [])
    assert merge_sessions(sessions, Window(22, 25)) == (
        Window(20, 30),
        [Window(20, 30)],
    )  # inside one
    assert merge_sessions(sessions, Window(5, 45)) == (Window(0, 50), sessions)


def test_merge_reaches_a_fixed_point_even_for_touching_inputs():
    # not the invariant the aggregation keeps, but the function must still merge transitively
    assert merge_sessions([Window(12, 20), Window(20, 25)], Window(0, 12)) == (
        Window(0, 25),
        [Window(12, 20), Window(20, 25)],
    )


def sessions_reference(timestamps: list[int], gap: int) -> list[tuple[int, int, int]]:
    """(start, end, count) of the sessions of sorted timestamps, offline."""
    out: list[list[int]] = []
    for t in sorted(timestamps):
        if out and t <= out[-1][1]:
            out[-1][1] = max(out[-1][1], t + gap)
            out[-1][2] += 1
        else:
            out.append([t, t + gap, 1])
    return [tuple(x) for x in out]


def test_merging_in_any_order_gives_the_offline_sessions():
    rng = random.Random(7)
    for _ in range(200):
        gap = rng.randint(1, 20)
        ts = [rng.randint(0, 300) for _ in range(rng.randint(1, 40))]
        sessions: dict[Window, int] = {}
        for t in rng.sample(ts, len(ts)):
            merged, absorbed = merge_sessions(list(sessions), Window(t, t + gap))
            n = sum(sessions.pop(s) for s in absorbed) + 1
            sessions[merged] = n
            ordered = sorted(sessions)
            assert all(not a.touches(b) for a, b in zip(ordered, ordered[1:])), ordered
        assert sorted((w.start, w.end, n) for w, n in sessions.items()) == sessions_reference(
            ts, gap
        )


# ---- the aggregation, on a fake context ------------------------------------------------------


class FakeContext:
    """One key's world as a task gives it: dict state, timers, outputs, the input watermark."""

    def __init__(self, key="k"):
        self.key = key
        self.state: dict = {}
        self.timers: dict[str, int] = {}
        self.outputs: list[tuple] = []
        self.low_watermark = MIN_WATERMARK
        self._default_ts = 0

    def produce(self, stream, key, value, timestamp=None):
        self.outputs.append(
            (stream, key, value, self._default_ts if timestamp is None else timestamp)
        )

    def set_timer(self, tag, timestamp, domain="event"):
        assert isinstance(tag, str) and domain == "event"
        self.timers[tag] = timestamp

    def delete_timer(self, tag):
        self.timers.pop(tag, None)


class Driver:
    """Feeds records and watermarks to a computation like a task would (timers fire in time order)."""

    def __init__(self, comp):
        self.comp = comp
        self.ctx = FakeContext()
        self.n = 0

    def record(self, ts, value=None):
        self.ctx._default_ts = ts
        r = Record(
            self.ctx.key,
            value if value is not None else self.n,
            ts,
            self.n.to_bytes(8, "big"),
            "events",
            ts < self.ctx.low_watermark,
        )
        self.n += 1
        self.comp.process_record(self.ctx, r)

    def watermark(self, w):
        self.ctx.low_watermark = w
        while True:
            due = sorted((ts, tag) for tag, ts in self.ctx.timers.items() if ts <= w)
            if not due:
                return
            ts, tag = due[0]
            del self.ctx.timers[tag]
            self.ctx._default_ts = ts
            self.comp.process_timer(self.ctx, Timer(self.ctx.key, tag, ts))

    def take(self):
        out, self.ctx.outputs = self.ctx.outputs, []
        return [(v["start"], v["end"], v["n"], ts) for _, _, v, ts in out]


class Count(WindowedAggregation[int]):
    windows = Tumbling(1000, allowed_lateness_ms=500)

    def __init__(self):
        self.dropped: list[int] = []

    def initial(self):
        return 0

    def add(self, acc, record):
        return acc + 1

    def emit(self, ctx, window, acc):
        ctx.produce("out", ctx.key, {"start": window.start, "end": window.end, "n": acc})

    def late(self, ctx, record):
        self.dropped.append(record.timestamp)


def test_tumbling_fires_once_when_the_watermark_reaches_the_end():
    d = Driver(Count())
    for ts in (100, 900, 1100, 50):
        d.record(ts)
    assert d.ctx.timers == {"kwheel.window/0/1000": 1000, "kwheel.window/1000/2000": 2000}
    assert d.ctx.state == {"kwheel.window/0/1000": 3, "kwheel.window/1000/2000": 1}
    d.watermark(999)
    assert d.take() == []
    d.watermark(1000)
    assert d.take() == [(0, 1000, 3, 1000)]  # timestamped at the end: not late downstream
    assert d.ctx.timers == {"kwheel.window/0/1000": 1500, "kwheel.window/1000/2000": 2000}
    d.watermark(1499)
    assert d.take() == [] and "kwheel.window/0/1000" in d.ctx.state
    d.watermark(1500)  # end of lateness: state dropped, nothing emitted
    assert d.take() == [] and "kwheel.window/0/1000" not in d.ctx.state
    d.watermark(3000)
    assert d.take() == [(1000, 2000, 1, 2000)]
    assert d.ctx.state == {} and d.ctx.timers == {}


def test_late_record_within_lateness_re_emits_at_once_and_beyond_goes_to_late():
    comp = Count()
    d = Driver(comp)
    d.record(10)
    d.record(20)
    d.watermark(1200)
    assert d.take() == [(0, 1000, 2, 1000)]
    d.record(30)  # behind the watermark, within lateness: a late firing with the new count
    assert d.take() == [(0, 1000, 3, 1000)]
    assert d.ctx.timers == {"kwheel.window/0/1000": 1500}
    d.watermark(1500)
    d.record(40)  # beyond lateness: no emission, handed to late()
    assert d.take() == [] and comp.dropped == [40] and d.ctx.state == {}


def test_a_late_record_whose_window_timer_is_still_due_is_emitted_once():
    d = Driver(Count())
    d.record(10)
    d.ctx.low_watermark = 1200  # watermark raised, the window's timer not fired yet
    d.record(20)
    assert d.take() == [(0, 1000, 2, 1000)]
    d.watermark(1200)  # the timer at 1000 was moved to 1500: no second emission
    assert d.take() == []
    d.watermark(2000)
    assert d.take() == [] and d.ctx.state == {} and d.ctx.timers == {}


def test_the_first_record_of_an_already_complete_window_fires_it_at_once():
    d = Driver(Count())
    d.watermark(1100)
    d.record(999)
    assert d.take() == [(0, 1000, 1, 1000)]


def test_without_allowed_lateness_a_late_record_is_dropped():
    class Strict(Count):
        windows = Tumbling(1000)

    comp = Strict()
    d = Driver(comp)
    d.record(5)
    d.watermark(1000)
    assert d.take() == [(0, 1000, 1, 1000)] and d.ctx.state == {} and d.ctx.timers == {}
    d.record(6)
    assert d.take() == [] and comp.dropped == [6]


def test_sliding_counts_each_record_in_every_window():
    class SlidingCount(Count):
        windows = Sliding(1000, 500)

    d = Driver(SlidingCount())
    for ts in (100, 600, 1200):
        d.record(ts)
    d.watermark(10_000)
    assert sorted(d.take()) == [
        (-500, 500, 1, 500),
        (0, 1000, 2, 1000),
        (500, 1500, 2, 1500),
        (1000, 2000, 1, 2000),
    ]
    assert d.ctx.state == {} and d.ctx.timers == {}


def test_sliding_record_too_late_for_some_windows_only_updates_the_others():
    class SlidingCount(Count):
        windows = Sliding(1000, 500, allowed_lateness_ms=500)

    comp = SlidingCount()
    d = Driver(comp)
    d.watermark(1500)  # [0, 1000) closed (1000 + 500), [500, 1500) late but open
    d.record(700)
    assert d.take() == [(500, 1500, 1, 1500)] and comp.dropped == []
    d.watermark(2000)
    d.record(701)
    assert d.take() == [] and comp.dropped == [701]


class SessionSum(WindowedAggregation):
    windows = Session(100, allowed_lateness_ms=50)

    def __init__(self):
        self.merges = 0

    def initial(self):
        return 0

    def add(self, acc, record):
        return acc + 1

    def merge(self, a, b):
        self.merges += 1
        return a + b

    def emit(self, ctx, window, acc):
        ctx.produce("out", ctx.key, {"start": window.start, "end": window.end, "n": acc})


def test_sessions_merge_state_and_move_timers():
    comp = SessionSum()
    d = Driver(comp)
    d.record(0)
    d.record(300)
    assert d.ctx.state[SESSIONS] == ((0, 100), (300, 400))
    assert d.ctx.timers == {"kwheel.window/0/100": 101, "kwheel.window/300/400": 401}
    d.record(50)  # extends the first session, no merge of two accumulators
    assert d.ctx.state[SESSIONS] == ((0, 150), (300, 400)) and comp.merges == 0
    assert d.ctx.timers == {"kwheel.window/0/150": 151, "kwheel.window/300/400": 401}
    assert "kwheel.window/0/100" not in d.ctx.state
    d.record(200)  # touches [0, 150)? no: [200, 300) is adjacent to [300, 400) only
    assert d.ctx.state[SESSIONS] == ((0, 150), (200, 400)) and comp.merges == 0
    d.record(150)  # [150, 250) touches both: they merge
    assert comp.merges == 1
    assert d.ctx.state == {SESSIONS: ((0, 400),), "kwheel.window/0/400": 5}
    assert d.ctx.timers == {"kwheel.window/0/400": 401}
    d.watermark(400)
    assert d.take() == []  # a record at 400 would still extend the session
    d.record(400)
    d.watermark(501)
    assert d.take() == [(0, 500, 6, 501)]
    d.watermark(551)
    assert d.ctx.state == {} and d.ctx.timers == {}


def test_a_late_record_reopens_a_fired_session_within_lateness():
    d = Driver(SessionSum())
    d.record(0)
    d.watermark(120)
    assert d.take() == [(0, 100, 1, 101)]
    d.record(90)  # late, extends the session to [0, 190): not complete, so it waits for 191
    assert d.take() == []
    assert d.ctx.timers == {"kwheel.window/0/190": 191}
    d.watermark(191)
    assert d.take() == [(0, 190, 2, 191)]
    d.record(10)  # within lateness of [0, 190): fires at once
    assert d.take() == [(0, 190, 3, 191)]


def test_a_closed_session_does_not_merge_and_a_too_late_record_goes_to_late():
    class S(SessionSum):
        windows = Session(100)

        def __init__(self):
            super().__init__()
            self.dropped = []

        def late(self, ctx, record):
            self.dropped.append(record.timestamp)

    comp = S()
    d = Driver(comp)
    d.record(0)
    d.ctx.low_watermark = 150  # [0, 100) closed, its timer not fired yet
    d.record(60)  # [60, 160) would touch it, but a closed session never merges again
    assert comp.dropped == [] and comp.merges == 0
    assert d.ctx.state[SESSIONS] == ((0, 100), (60, 160))
    d.watermark(150)
    assert d.take() == [(0, 100, 1, 101)]
    assert d.ctx.state == {SESSIONS: ((60, 160),), "kwheel.window/60/160": 1}
    d.record(40)  # [40, 140) touches [60, 160): merged, still open
    assert d.ctx.state[SESSIONS] == ((40, 160),)
    d.record(10)  # [10, 110) touches [40, 160) too
    d.watermark(1000)
    assert d.take() == [(10, 160, 3, 161)]
    d.record(800)  # [800, 900) closes at 901 <= 1000: too late
    assert comp.dropped == [800] and d.ctx.state == {}


def test_sessions_without_merge_fail_with_a_clear_error():
    class NoMerge(SessionSum):
        merge = WindowedAggregation.merge

    d = Driver(NoMerge())
    d.record(0)
    d.record(200)
    with pytest.raises(
        NotImplementedError, match=r"NoMerge uses session windows.*merge\(self, a, b\)"
    ):
        d.record(100)


def test_random_disordered_sessions_match_the_offline_reference():
    rng = random.Random(21)
    for _ in range(50):
        comp = SessionSum()
        comp.windows = Session(rng.randint(1, 30))
        d = Driver(comp)
        ts = sorted(rng.randint(0, 500) for _ in range(rng.randint(1, 60)))
        bound = rng.randint(0, 40)
        arrival = sorted(ts, key=lambda t: t + rng.uniform(0, bound))
        max_seen = MIN_WATERMARK
        for t in arrival:
            d.record(t)
            max_seen = max(max_seen, t)
            d.watermark(max_seen - bound)
        d.watermark(MAX_WATERMARK)
        got = sorted((s, e, n) for s, e, n, _ in d.take())
        assert got == sessions_reference(ts, comp.windows.gap_ms)
        assert d.ctx.state == {} and d.ctx.timers == {}


def test_missing_windows_is_a_clear_error():
    class NoWindows(Count):
        windows = None

    with pytest.raises(TypeError, match="NoWindows.windows must be"):
        Driver(NoWindows()).record(1)


def test_foreign_and_stale_timers_are_ignored():
    d = Driver(Count())
    d.comp.process_timer(d.ctx, Timer("k", "mine", 5))
    d.comp.process_timer(d.ctx, Timer("k", "kwheel.window/0/1000", 1000))
    assert d.take() == [] and d.ctx.state == {}
