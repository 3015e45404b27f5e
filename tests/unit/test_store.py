"""TaskStore on a local RocksDB: atomic apply of changelog records, seen ids, wipe, reopen."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kwheel.errors import StateError
from kwheel.record import TimeDomain
from kwheel.state import layout
from kwheel.state.store import TaskStore
from kwheel.watermarks import MAX_WATERMARK, MIN_WATERMARK

ID_A = b"a" * 16
ID_B = b"b" * 16
ID_C = b"c" * 16


@pytest.fixture
def store(tmp_path):
    s = TaskStore(tmp_path / "tasks" / "c-0")
    yield s
    s.close()


def state_put(key, state):
    return (layout.state_key(key), layout.encode_state(state))


def id_batch(n, ids):
    return (layout.id_batch_key(n), layout.encode_id_batch(ids))


def test_new_store_is_empty(store):
    assert store.applied_offset == -1
    assert store.next_batch == 0
    assert list(store.seen_ids()) == []
    assert store.get(layout.state_key("k")) is None
    assert not store.has_seen(ID_A)


def test_store_creates_missing_parent_directories(tmp_path):
    s = TaskStore(tmp_path / "a" / "b" / "c")
    try:
        assert (tmp_path / "a" / "b").is_dir()
    finally:
        s.close()


def test_apply_state_put_sets_value_and_offset(store):
    store.apply([state_put("k", {"count": 1})], offset=10)
    assert layout.decode_state(store.get(layout.state_key("k"))) == {"count": 1}
    assert store.applied_offset == 10


def test_apply_state_tombstone_deletes(store):
    store.apply([state_put("k", {"count": 1})], offset=0)
    store.apply([(layout.state_key("k"), None)], offset=1)
    assert store.get(layout.state_key("k")) is None
    assert store.applied_offset == 1


def test_later_change_in_same_apply_wins(store):
    store.apply([state_put("k", {"v": 1}), state_put("k", {"v": 2})], offset=5)
    assert layout.decode_state(store.get(layout.state_key("k"))) == {"v": 2}


def test_apply_with_no_changes_still_moves_offset(store):
    store.apply([], offset=42)
    assert store.applied_offset == 42


def test_apply_id_batch_marks_ids_seen_and_sets_next_batch(store):
    store.apply([id_batch(0, {ID_A: 100, ID_B: 200})], offset=3, next_batch=1)
    assert store.has_seen(ID_A)
    assert store.has_seen(ID_B)
    assert not store.has_seen(ID_C)
    assert sorted(store.seen_ids()) == [ID_A, ID_B]
    assert store.next_batch == 1
    assert store.applied_offset == 3


def test_seen_id_records_its_timestamp(store):
    store.apply([id_batch(0, {ID_A: 1234})], offset=0, next_batch=1)
    assert layout.decode_u64(store.get(layout.SEEN + ID_A)) == 1234


def test_seen_ids_stops_at_the_seen_prefix(store):
    store.apply(
        [state_put("zzz", {"x": 1}), id_batch(0, {ID_A: 1}), state_put("aaa", {"y": 2})],
        offset=0,
        next_batch=1,
    )
    assert list(store.seen_ids()) == [ID_A]


def test_restore_apply_keeps_next_batch_ahead_of_every_batch_seen(store):
    # next_batch=None is the restore path: derive it from the batch numbers replayed
    store.apply([id_batch(0, {ID_A: 1}), id_batch(4, {ID_B: 2})], offset=1)
    assert store.next_batch == 5
    store.apply([id_batch(2, {ID_C: 3})], offset=2)
    assert store.next_batch == 5


def test_restore_apply_keeps_next_batch_ahead_of_out_of_order_batches_in_one_apply(store):
    store.apply([id_batch(4, {ID_A: 1}), id_batch(2, {ID_B: 2})], offset=1)
    assert store.next_batch == 5


def test_explicit_next_batch_is_stored(store):
    store.apply([id_batch(7, {ID_A: 1})], offset=0, next_batch=8)
    assert store.next_batch == 8


def test_id_batch_tombstone_removes_its_seen_ids(store):
    store.apply([id_batch(0, {ID_A: 1, ID_B: 2})], offset=0, next_batch=1)
    store.apply([id_batch(1, {ID_C: 3})], offset=1, next_batch=2)
    store.apply([(layout.id_batch_key(0), None)], offset=2)
    assert not store.has_seen(ID_A)
    assert not store.has_seen(ID_B)
    assert store.has_seen(ID_C)
    assert list(store.seen_ids()) == [ID_C]
    assert store.get(layout.id_batch_key(0)) is None
    assert store.applied_offset == 2


def test_tombstone_of_unknown_id_batch_is_harmless(store):
    store.apply([(layout.id_batch_key(9), None)], offset=0)
    assert store.applied_offset == 0
    assert list(store.seen_ids()) == []


def test_id_batch_put_and_tombstone_in_one_apply_leave_no_seen_ids(store):
    # one restore chunk can hold a batch and its later tombstone
    store.apply([id_batch(0, {ID_A: 1}), (layout.id_batch_key(0), None)], offset=1)
    assert store.get(layout.id_batch_key(0)) is None
    assert not store.has_seen(ID_A)
    assert list(store.seen_ids()) == []


def test_id_batch_tombstone_in_one_apply_spares_other_batches(store):
    store.apply(
        [id_batch(0, {ID_A: 1}), id_batch(1, {ID_B: 2}), (layout.id_batch_key(0), None)], offset=2
    )
    assert list(store.seen_ids()) == [ID_B]
    assert store.next_batch == 2


def test_wipe_empties_the_store(store):
    store.apply([state_put("k", {"v": 1}), id_batch(0, {ID_A: 1})], offset=7, next_batch=1)
    store.wipe()
    assert store.applied_offset == -1
    assert store.next_batch == 0
    assert store.get(layout.state_key("k")) is None
    assert not store.has_seen(ID_A)
    assert list(store.seen_ids()) == []


def test_store_is_usable_after_wipe(store):
    store.apply([state_put("k", {"v": 1})], offset=7)
    store.wipe()
    store.apply([state_put("k", {"v": 2})], offset=0)
    assert layout.decode_state(store.get(layout.state_key("k"))) == {"v": 2}
    assert store.applied_offset == 0


def test_reopening_the_same_path_keeps_data(tmp_path):
    path = tmp_path / "c-1"
    s = TaskStore(path)
    s.apply([state_put(b"bin", {"v": 1}), id_batch(0, {ID_A: 1})], offset=12, next_batch=1)
    s.close()
    s = TaskStore(path)
    try:
        assert s.applied_offset == 12
        assert s.next_batch == 1
        assert s.has_seen(ID_A)
        assert layout.decode_state(s.get(layout.state_key(b"bin"))) == {"v": 1}
    finally:
        s.close()


def test_a_store_open_elsewhere_is_in_use_not_damaged(tmp_path):
    """A second opening (another process, or this one) is refused with one line and
    leaves the data alone; once the first lets go, the store opens with its data."""
    path = tmp_path / "c-1"
    s = TaskStore(path)
    s.apply([state_put(b"k", {"v": 1})], offset=3)
    with pytest.raises(StateError, match=r"state store .*c-1 is in use by another process"):
        TaskStore(path)
    s.close()
    again = TaskStore(path)
    try:
        assert again.applied_offset == 3
    finally:
        again.close()


def test_a_store_locked_by_another_process_is_refused(tmp_path):
    path = tmp_path / "c-1"
    TaskStore(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_STORE, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(StateError, match="in use by another process"):
            TaskStore(path)
    finally:
        holder.kill()  # SIGKILL: the kernel releases its lock
        holder.wait(10)
    TaskStore(path).close()


HOLD_STORE = """
import sys, time
from kwheel.state.store import TaskStore
s = TaskStore(sys.argv[1])
print("open", flush=True)
time.sleep(60)
"""


# ---- timers and their time index --------------------------------------------------------------

EVENT, WALL = TimeDomain.EVENT, TimeDomain.WALL


def tkey(key, tag):
    return layout.timer_key(layout.key_tag(key), tag)


def timer_put(key, tag, ts, domain=EVENT):
    return (tkey(key, tag), layout.encode_timer(ts, domain))


def timer_del(key, tag):
    return (tkey(key, tag), None)


def index_entries(store):
    return [k for k in store._db.keys(from_key=layout.TIMER_INDEX) if k[:1] == layout.TIMER_INDEX]


def test_new_store_has_no_timers(store):
    assert list(store.timers(EVENT, MAX_WATERMARK)) == []
    assert list(store.timers(WALL, MAX_WATERMARK)) == []
    assert store.count_prefix(layout.TIMER) == 0


def test_timer_put_stores_the_timer_and_indexes_it(store):
    store.apply([timer_put("k", "t", 100)], offset=0)
    assert layout.decode_timer(store.get(tkey("k", "t"))) == (100, EVENT)
    assert list(store.timers(EVENT, 100)) == [(100, tkey("k", "t"))]
    assert index_entries(store) == [layout.timer_index_key(tkey("k", "t"), 100, EVENT)]


def test_timers_yield_in_time_order_up_to_and_including_until(store):
    store.apply(
        [
            timer_put("a", "t", 30),
            timer_put("b", "t", -10),
            timer_put("c", "t", 20),
            timer_put("d", "t", 0),
            timer_put("e", "t", 31),
            timer_put(b"f", "t", -(2**62)),
        ],
        offset=0,
    )
    assert list(store.timers(EVENT, 30)) == [
        (-(2**62), tkey(b"f", "t")),
        (-10, tkey("b", "t")),
        (0, tkey("d", "t")),
        (20, tkey("c", "t")),
        (30, tkey("a", "t")),
    ]
    assert [ts for ts, _ in store.timers(EVENT, -1)] == [-(2**62), -10]
    assert list(store.timers(EVENT, MIN_WATERMARK)) == []
    assert [ts for ts, _ in store.timers(EVENT, MAX_WATERMARK)] == [-(2**62), -10, 0, 20, 30, 31]


def test_timers_at_the_same_time_are_all_yielded(store):
    store.apply([timer_put("b", "t", 5), timer_put("a", "t", 5), timer_put("a", "u", 5)], offset=0)
    assert sorted(store.timers(EVENT, 5)) == [
        (5, tkey("a", "t")),
        (5, tkey("a", "u")),
        (5, tkey("b", "t")),
    ]


def test_timers_of_one_domain_do_not_show_in_the_other(store):
    store.apply([timer_put("k", "ev", 10, EVENT), timer_put("k", "wa", 5, WALL)], offset=0)
    assert list(store.timers(EVENT, MAX_WATERMARK)) == [(10, tkey("k", "ev"))]
    assert list(store.timers(WALL, MAX_WATERMARK)) == [(5, tkey("k", "wa"))]


def test_timers_stop_before_keys_after_the_index(store):
    # "w" (the watermark), "s" state, "t" timers sort around "x": none of them leak in
    store.apply(
        [
            timer_put("k", "t", 1, WALL),
            state_put("k", {"v": 1}),
            (layout.WATERMARK, b"\x00" * 16),
            id_batch(0, {ID_A: 1}),
        ],
        offset=0,
        next_batch=1,
    )
    assert list(store.timers(WALL, MAX_WATERMARK)) == [(1, tkey("k", "t"))]
    assert list(store.timers(EVENT, MAX_WATERMARK)) == []


def test_moving_a_timer_removes_its_old_index_entry(store):
    store.apply([timer_put("k", "t", 100)], offset=0)
    store.apply([timer_put("k", "t", 50)], offset=1)
    assert list(store.timers(EVENT, MAX_WATERMARK)) == [(50, tkey("k", "t"))]
    assert index_entries(store) == [layout.timer_index_key(tkey("k", "t"), 50, EVENT)]


def test_moving_a_timer_to_the_other_domain_moves_its_index_entry(store):
    store.apply([timer_put("k", "t", 100, EVENT)], offset=0)
    store.apply([timer_put("k", "t", 100, WALL)], offset=1)
    assert list(store.timers(EVENT, MAX_WATERMARK)) == []
    assert list(store.timers(WALL, MAX_WATERMARK)) == [(100, tkey("k", "t"))]
    assert len(index_entries(store)) == 1


def test_setting_a_timer_to_the_same_time_keeps_one_index_entry(store):
    store.apply([timer_put("k", "t", 100)], offset=0)
    store.apply([timer_put("k", "t", 100)], offset=1)
    assert list(store.timers(EVENT, MAX_WATERMARK)) == [(100, tkey("k", "t"))]
    assert len(index_entries(store)) == 1


def test_deleting_a_timer_removes_it_and_its_index_entry(store):
    store.apply([timer_put("k", "t", 100), timer_put("k", "u", 200)], offset=0)
    store.apply([timer_del("k", "t")], offset=1)
    assert store.get(tkey("k", "t")) is None
    assert list(store.timers(EVENT, MAX_WATERMARK)) == [(200, tkey("k", "u"))]
    assert index_entries(store) == [layout.timer_index_key(tkey("k", "u"), 200, EVENT)]


def test_deleting_an_unknown_timer_is_harmless(store):
    store.apply([timer_del("k", "t")], offset=0)
    assert store.applied_offset == 0
    assert index_entries(store) == []


def test_timer_put_and_delete_in_one_apply_leave_no_index_entry(store):
    # a restore chunk holding a timer and its later tombstone
    store.apply([timer_put("k", "t", 100), timer_del("k", "t")], offset=1)
    assert store.get(tkey("k", "t")) is None
    assert list(store.timers(EVENT, MAX_WATERMARK)) == []
    assert index_entries(store) == []


def test_timer_moved_twice_in_one_apply_keeps_only_the_last_index_entry(store):
    store.apply([timer_put("k", "t", 10)], offset=0)
    store.apply(
        [timer_put("k", "t", 20), timer_put("k", "t", 30, WALL), timer_put("k", "t", 5)], offset=1
    )
    assert list(store.timers(EVENT, MAX_WATERMARK)) == [(5, tkey("k", "t"))]
    assert list(store.timers(WALL, MAX_WATERMARK)) == []
    assert index_entries(store) == [layout.timer_index_key(tkey("k", "t"), 5, EVENT)]


def test_timer_deleted_then_set_again_in_one_apply_is_indexed(store):
    store.apply([timer_put("k", "t", 10)], offset=0)
    store.apply([timer_del("k", "t"), timer_put("k", "t", 40)], offset=1)
    assert list(store.timers(EVENT, MAX_WATERMARK)) == [(40, tkey("k", "t"))]
    assert len(index_entries(store)) == 1


def test_timer_index_survives_reopening(tmp_path):
    s = TaskStore(tmp_path / "c-2")
    s.apply([timer_put("k", "t", 7), timer_put("j", "t", 3)], offset=0)
    s.close()
    s = TaskStore(tmp_path / "c-2")
    try:
        assert list(s.timers(EVENT, MAX_WATERMARK)) == [(3, tkey("j", "t")), (7, tkey("k", "t"))]
    finally:
        s.close()


def test_wipe_drops_timers_and_their_index(store):
    store.apply([timer_put("k", "t", 7)], offset=0)
    store.wipe()
    assert list(store.timers(EVENT, MAX_WATERMARK)) == []
    assert store.count_prefix(layout.TIMER) == 0


# ---- count_prefix -----------------------------------------------------------------------------


def test_count_prefix_counts_only_keys_with_the_prefix(store):
    store.apply(
        [
            timer_put("a", "t", 1),
            timer_put("b", "t", 2, WALL),
            timer_put("b", "u", 3),
            state_put("a", {"x": 1}),
            state_put("b", {"x": 2}),
            id_batch(0, {ID_A: 1, ID_B: 2}),
        ],
        offset=0,
        next_batch=1,
    )
    assert store.count_prefix(layout.TIMER) == 3
    assert store.count_prefix(layout.TIMER_INDEX) == 3
    assert store.count_prefix(layout.timer_index_prefix(WALL)) == 1
    assert store.count_prefix(layout.STATE) == 2
    assert store.count_prefix(layout.SEEN) == 2
    assert store.count_prefix(layout.ID_BATCH) == 1
    assert store.count_prefix(layout.state_key("a")) == 1
    assert store.count_prefix(b"z") == 0


def test_count_prefix_follows_deletes(store):
    store.apply([timer_put("a", "t", 1), timer_put("b", "t", 2)], offset=0)
    store.apply([timer_del("a", "t")], offset=1)
    assert store.count_prefix(layout.TIMER) == 1


def test_count_prefix_of_empty_prefix_counts_every_key(store):
    store.apply([state_put("a", {"x": 1})], offset=0)
    assert store.count_prefix(b"") == len(list(store._db.keys()))


# ---- the timer count kept with the timers ----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from("abcd"), st.one_of(st.none(), st.integers(-5, 5))),
            max_size=6,
        ),
        max_size=6,
    )
)
def test_the_timer_count_is_kept_by_apply_across_reopening(batches):
    """A store keeps how many timers it holds (opening a task does not count them): after
    every apply, and after reopening, it equals a count of the timer keys."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c-0"
        s = TaskStore(path)
        try:
            for offset, batch in enumerate(batches):
                changes = [
                    timer_put(k, "t", ts) if ts is not None else timer_del(k, "t")
                    for k, ts in batch
                ]
                s.apply(changes, offset)
                assert s.timer_count == s.count_prefix(layout.TIMER)
            s.close()
            s = TaskStore(path)
            assert s.timer_count == s.count_prefix(layout.TIMER)
            s.wipe()
            assert s.timer_count == 0
        finally:
            s.close()


def test_a_store_without_a_kept_count_is_counted_once(tmp_path):
    s = TaskStore(tmp_path / "c-0")
    s.apply([timer_put("a", "t", 1), timer_put("b", "t", 2)], 0)
    s._db.delete(layout.TIMER_COUNT)  # as written by a kwheel before the count was kept
    s.close()
    s = TaskStore(tmp_path / "c-0")
    try:
        assert s.timer_count == 2
        s.apply([timer_del("a", "t")], 1)
        assert layout.decode_u64(s.get(layout.TIMER_COUNT)) == 1
    finally:
        s.close()
