"""TimerTable: committed timers in a TaskStore, the open batch's changes in an overlay."""

from __future__ import annotations

import pytest

from kwheel.record import TimeDomain
from kwheel.runtime.timers import TimerTable
from kwheel.state import layout
from kwheel.state.store import TaskStore
from kwheel.watermarks import MAX_WATERMARK

EVENT, WALL = TimeDomain.EVENT, TimeDomain.WALL


def tkey(key, tag="t"):
    return layout.timer_key(layout.key_tag(key), tag)


def tval(ts, domain=EVENT):
    return layout.encode_timer(ts, domain)


@pytest.fixture
def store(tmp_path):
    s = TaskStore(tmp_path / "c-0")
    yield s
    s.close()


def commit(store: TaskStore, table: TimerTable, offset: int = 0) -> None:
    """What Task.commit does with the timer overlay."""
    store.apply(list(table.changes.items()), offset)
    table.committed()


# ---- apply, value, pending -------------------------------------------------------------------


def test_empty_table(store):
    t = TimerTable(store)
    assert t.pending == 0
    assert t.changes == {}
    assert t.value(tkey("k")) is None
    assert t.due(EVENT, MAX_WATERMARK) == []
    assert t.earliest(EVENT) == MAX_WATERMARK
    assert t.earliest(WALL) == MAX_WATERMARK


def test_pending_counts_committed_timers_at_construction(store):
    store.apply(
        [(tkey("a"), tval(1)), (tkey("b"), tval(2, WALL)), (layout.state_key("a"), b"x")], offset=0
    )
    assert TimerTable(store).pending == 2


def test_apply_sets_a_timer_in_the_overlay_only(store):
    t = TimerTable(store)
    t.apply(tkey("k"), tval(10))
    assert t.value(tkey("k")) == tval(10)
    assert t.pending == 1
    assert t.changes == {tkey("k"): tval(10)}
    assert store.get(tkey("k")) is None


def test_value_reads_through_to_the_store(store):
    store.apply([(tkey("k"), tval(10))], offset=0)
    t = TimerTable(store)
    assert t.value(tkey("k")) == tval(10)
    t.apply(tkey("k"), tval(20))
    assert t.value(tkey("k")) == tval(20)
    t.apply(tkey("k"), None)
    assert t.value(tkey("k")) is None


def test_moving_a_timer_does_not_change_pending(store):
    t = TimerTable(store)
    t.apply(tkey("k"), tval(10))
    t.apply(tkey("k"), tval(20, WALL))
    assert t.pending == 1


def test_deleting_counts_down_once(store):
    store.apply([(tkey("a"), tval(1)), (tkey("b"), tval(2))], offset=0)
    t = TimerTable(store)
    t.apply(tkey("a"), None)
    assert t.pending == 1
    t.apply(tkey("a"), None)  # already gone
    assert t.pending == 1
    t.apply(tkey("zzz"), None)  # never set
    assert t.pending == 1


def test_setting_then_deleting_in_one_batch_nets_to_zero(store):
    t = TimerTable(store)
    t.apply(tkey("k"), tval(10))
    t.apply(tkey("k"), None)
    assert t.pending == 0
    assert t.value(tkey("k")) is None


def test_setting_a_committed_timer_to_its_own_value_is_no_change(store):
    store.apply([(tkey("k"), tval(10))], offset=0)
    t = TimerTable(store)
    t.apply(tkey("k"), tval(10))
    assert t.changes == {}
    assert t.pending == 1


def test_deleted_and_set_again_counts_once(store):
    store.apply([(tkey("k"), tval(10))], offset=0)
    t = TimerTable(store)
    t.apply(tkey("k"), None)
    t.apply(tkey("k"), tval(30))
    assert t.pending == 1


# ---- due ---------------------------------------------------------------------------------------


def test_due_merges_store_and_overlay_in_time_order(store):
    store.apply([(tkey("s1"), tval(10)), (tkey("s2"), tval(30)), (tkey("s3"), tval(50))], offset=0)
    t = TimerTable(store)
    t.apply(tkey("o1"), tval(20))
    t.apply(tkey("o2"), tval(-5))
    t.apply(tkey("o3"), tval(60))
    assert t.due(EVENT, 50) == [
        (-5, tkey("o2")),
        (10, tkey("s1")),
        (20, tkey("o1")),
        (30, tkey("s2")),
        (50, tkey("s3")),
    ]


def test_due_limit_is_inclusive(store):
    store.apply([(tkey("s"), tval(10))], offset=0)
    t = TimerTable(store)
    t.apply(tkey("o"), tval(10))
    assert t.due(EVENT, 9) == []
    assert t.due(EVENT, 10) == [(10, tkey("o")), (10, tkey("s"))]


def test_overlay_overrides_the_store(store):
    store.apply([(tkey("early"), tval(10)), (tkey("late"), tval(100))], offset=0)
    t = TimerTable(store)
    t.apply(tkey("early"), tval(200))  # moved later: no longer due
    t.apply(tkey("late"), tval(5))  # moved earlier: due now, once
    assert t.due(EVENT, 50) == [(5, tkey("late"))]
    assert t.due(EVENT, MAX_WATERMARK) == [(5, tkey("late")), (200, tkey("early"))]


def test_deleted_timers_are_not_due(store):
    store.apply([(tkey("a"), tval(10)), (tkey("b"), tval(20))], offset=0)
    t = TimerTable(store)
    t.apply(tkey("a"), None)
    t.apply(tkey("c"), tval(15))
    t.apply(tkey("c"), None)
    assert t.due(EVENT, MAX_WATERMARK) == [(20, tkey("b"))]


def test_due_keeps_domains_apart(store):
    store.apply([(tkey("se"), tval(1, EVENT)), (tkey("sw"), tval(2, WALL))], offset=0)
    t = TimerTable(store)
    t.apply(tkey("oe"), tval(3, EVENT))
    t.apply(tkey("ow"), tval(4, WALL))
    t.apply(tkey("se2"), tval(0, EVENT))
    assert t.due(EVENT, MAX_WATERMARK) == [(0, tkey("se2")), (1, tkey("se")), (3, tkey("oe"))]
    assert t.due(WALL, MAX_WATERMARK) == [(2, tkey("sw")), (4, tkey("ow"))]


def test_timer_moved_to_the_other_domain_is_due_only_there(store):
    store.apply([(tkey("k"), tval(10, EVENT))], offset=0)
    t = TimerTable(store)
    t.apply(tkey("k"), tval(10, WALL))
    assert t.due(EVENT, MAX_WATERMARK) == []
    assert t.due(WALL, MAX_WATERMARK) == [(10, tkey("k"))]


# ---- earliest ----------------------------------------------------------------------------------


def test_earliest_of_store_only(store):
    store.apply(
        [(tkey("a"), tval(30)), (tkey("b"), tval(-7)), (tkey("c"), tval(1, WALL))], offset=0
    )
    t = TimerTable(store)
    assert t.earliest(EVENT) == -7
    assert t.earliest(WALL) == 1


def test_earliest_of_overlay_only(store):
    t = TimerTable(store)
    t.apply(tkey("a"), tval(30))
    t.apply(tkey("b"), tval(8, WALL))
    assert t.earliest(EVENT) == 30
    assert t.earliest(WALL) == 8


def test_earliest_skips_committed_timers_moved_or_deleted_in_the_overlay(store):
    store.apply([(tkey("a"), tval(10)), (tkey("b"), tval(20)), (tkey("c"), tval(40))], offset=0)
    t = TimerTable(store)
    t.apply(tkey("a"), None)
    t.apply(tkey("b"), tval(50))
    assert t.earliest(EVENT) == 40
    t.apply(tkey("c"), None)
    assert t.earliest(EVENT) == 50
    t.apply(tkey("b"), None)
    assert t.earliest(EVENT) == MAX_WATERMARK


def test_earliest_takes_an_overlay_timer_earlier_than_the_store(store):
    store.apply([(tkey("a"), tval(10))], offset=0)
    t = TimerTable(store)
    t.apply(tkey("z"), tval(3))
    assert t.earliest(EVENT) == 3


def test_earliest_ignores_overlay_timers_of_the_other_domain(store):
    t = TimerTable(store)
    t.apply(tkey("a"), tval(3, WALL))
    assert t.earliest(EVENT) == MAX_WATERMARK


# ---- committed, discard ------------------------------------------------------------------------


def test_committed_clears_the_overlay_and_keeps_pending(store):
    store.apply([(tkey("old"), tval(1))], offset=0)
    t = TimerTable(store)
    t.apply(tkey("new"), tval(5))
    t.apply(tkey("old"), None)
    commit(store, t, offset=1)
    assert t.changes == {}
    assert t.pending == 1 == store.count_prefix(layout.TIMER)
    assert t.value(tkey("new")) == tval(5)
    assert t.value(tkey("old")) is None
    assert t.due(EVENT, MAX_WATERMARK) == [(5, tkey("new"))]


def test_a_table_over_a_committed_store_agrees_with_the_old_one(store):
    t = TimerTable(store)
    for i, ts in enumerate((30, 10, 20)):
        t.apply(tkey(f"k{i}"), tval(ts))
    commit(store, t)
    fresh = TimerTable(store)
    assert fresh.pending == t.pending == 3
    assert fresh.due(EVENT, MAX_WATERMARK) == t.due(EVENT, MAX_WATERMARK)
    assert fresh.earliest(EVENT) == 10


def test_discard_drops_the_overlay_and_restores_pending(store):
    store.apply([(tkey("a"), tval(10)), (tkey("b"), tval(20))], offset=0)
    t = TimerTable(store)
    t.apply(tkey("a"), None)
    t.apply(tkey("b"), None)
    t.apply(tkey("c"), tval(1))
    t.apply(tkey("d"), tval(2))
    t.apply(tkey("e"), tval(3))
    assert t.pending == 3
    t.discard()
    assert t.changes == {}
    assert t.pending == 2
    assert t.due(EVENT, MAX_WATERMARK) == [(10, tkey("a")), (20, tkey("b"))]
    assert t.value(tkey("c")) is None


def test_discard_of_an_empty_overlay_keeps_pending(store):
    t = TimerTable(store)
    t.discard()
    assert t.pending == 0
