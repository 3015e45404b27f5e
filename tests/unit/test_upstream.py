"""WatermarkTable and Upstream: which watermark a task may use, from control records and
how far it has consumed. Pure logic: no broker."""

from __future__ import annotations

import pytest

from kwheel import Computation, Input, Pipeline
from kwheel.watermarks import MAX_WATERMARK, MIN_WATERMARK
from kwheel.watermarks.control import (
    INJECTOR,
    TASK,
    Control,
    injector_producer_id,
    task_producer_id,
)
from kwheel.watermarks.upstream import LEVEL, Upstream, WatermarkTable


class Nop(Computation):
    def process_record(self, ctx, record):
        pass


def country(record):
    return record.value["country"]


@pytest.fixture
def pipeline() -> Pipeline:
    """events (source, 2 partitions) -> A (2 tasks) -> mid (2) -> B
    events re-keyed by C (4 tasks) through p.C.events.repartition."""
    p = Pipeline("p")
    p.stream("events", partitions=2, source=True)
    p.stream("other", partitions=2, source=True)
    p.stream("mid", partitions=2)
    p.computation("A", Nop, inputs=["events"], outputs=["mid"])
    p.computation("B", Nop, inputs=["mid"])
    p.computation("C", Nop, inputs=[Input("events", key_by=country)], partitions=4)
    return p.validate()


INJ1 = injector_producer_id("load", "1")
INJ2 = injector_producer_id("load", "2")
A0 = task_producer_id("A", 0)
A1 = task_producer_id("A", 1)


def injector(w, positions=(), pid=INJ1, streams=("events",), final=False) -> Control:
    return Control(pid, INJECTOR, list(streams), w, list(positions), 0, final=final)


def task(pid, w, positions=(), streams=("mid",), incarnation=0) -> Control:
    return Control(pid, TASK, list(streams), w, list(positions), 0, incarnation=incarnation)


def at(**offsets: int):
    """consumed(topic) from keyword offsets; dots in topic names are written as '__'."""
    table = {k.replace("__", "."): v for k, v in offsets.items()}
    return lambda topic: table.get(topic, 0)


def table_of(*controls: Control) -> WatermarkTable:
    t = WatermarkTable()
    for c in controls:
        t.add(c)
    return t


# ---- WatermarkTable ---------------------------------------------------------------------------


def test_empty_table():
    t = WatermarkTable()
    assert t.latest(INJ1) is None
    assert t.published(INJ1) == MIN_WATERMARK
    assert t.injectors_of("events") == []


def test_latest_is_the_last_added():
    a, b = injector(5), injector(3)
    t = table_of(a, b)
    assert t.latest(INJ1) is b


def test_published_is_the_max_ever_published_not_the_latest():
    t = table_of(task(A0, 5), task(A0, 9), task(A0, 3))
    assert t.published(A0) == 9


def announce(pid, incarnation, owner="x") -> Control:
    return Control(
        pid,
        TASK,
        ["mid"],
        MIN_WATERMARK,
        [],
        0,
        incarnation=incarnation,
        announce=True,
        owner=owner,
    )


def owned(pid, w, incarnation, owner="x", positions=()) -> Control:
    return Control(pid, TASK, ["mid"], w, list(positions), 0, incarnation=incarnation, owner=owner)


def test_an_announcement_is_not_a_watermark(pipeline):
    # the old owner published 9 covering mid[0] up to 100; the new owner's announcement
    # covers nothing: a reader at 50 must not get 9 from it
    t = table_of(announce(A0, 1), owned(A0, 9, 1, positions=[("p.mid", 0, 100)]))
    assert not t.add(announce(A0, 2, owner="y"))
    assert t.latest(A0).watermark == 9 and t.published(A0) == 9
    assert t.incarnation(A0) == 2 and t.owner(A0) == (2, "y")
    up = Upstream(pipeline, "B", 0)
    t.add(task(A1, 50))  # B's other upstream task, with nothing to wait for
    assert up.watermark(t, at(p__mid=50)) == MIN_WATERMARK
    assert up.watermark(t, at(p__mid=100)) == 9


def test_history_keeps_the_newest_densely_and_the_past_sparsely():
    n = 100 * LEVEL
    t = table_of(*(task(A0, i, positions=[("p.mid", 0, i)]) for i in range(1, n + 1)), task(A1, 0))
    kept = [c.watermark for c in t.entries[A0]]
    assert len(kept) <= LEVEL * 8
    assert kept == sorted(kept) and kept[-LEVEL:] == list(range(n - LEVEL + 1, n + 1))
    gaps = [b - a for a, b in zip(kept, kept[1:])]
    assert gaps == sorted(gaps, reverse=True)  # the older, the sparser
    assert kept[0] <= 2 * LEVEL  # and it reaches back to the start
    assert len(t.entries[A1]) == 1


def test_controls_with_the_same_positions_collapse_into_the_newest():
    t = table_of(
        task(A0, 1, positions=[("p.mid", 0, 5)]),
        task(A0, 2, positions=[("p.mid", 0, 5)]),
        task(A0, 3, positions=[("p.mid", 0, 6)]),
    )
    assert [c.watermark for c in t.entries[A0]] == [2, 3]


def test_a_zombie_control_after_its_successor_announced_is_dropped():
    # incarnation 1 published 5; incarnation 2 announced itself; the zombie (still
    # incarnation 1) then publishes 9 from stale state: no reader may use it
    t = WatermarkTable()
    t.add(announce(A0, 1))
    assert t.add(owned(A0, 5, 1))
    assert not t.add(announce(A0, 2, owner="y"))
    assert not t.add(owned(A0, 9, 1))
    assert t.published(A0) == 5
    assert t.incarnation(A0) == 2
    assert t.add(owned(A0, 7, 2, owner="y"))
    assert t.published(A0) == 7


def test_an_opening_that_lost_the_race_for_its_number_is_dropped():
    # two openings both read incarnation 1 and announced 2: the later announcement owns it
    t = table_of(announce(A0, 1), announce(A0, 2, owner="a"), announce(A0, 2, owner="b"))
    assert t.owner(A0) == (2, "b")
    assert not t.add(owned(A0, 9, 2, owner="a"))
    assert t.add(owned(A0, 9, 2, owner="b"))


def test_a_stale_announcement_does_not_take_the_task_back():
    t = table_of(announce(A0, 3, owner="new"), announce(A0, 2, owner="old"))
    assert t.owner(A0) == (3, "new")


def test_what_an_old_incarnation_published_before_the_announcement_counts():
    t = table_of(
        announce(A0, 1),
        owned(A0, 5, 1),
        owned(A0, 8, 1),
        announce(A0, 2, owner="y"),
        owned(A0, 6, 2, "y"),
    )
    assert t.published(A0) == 8  # the new owner resumes at or above it


def test_the_incarnation_survives_the_history_limit():
    t = table_of(
        announce(A0, 4), *(owned(A0, i, 4, positions=[("p.mid", 0, i)]) for i in range(10 * LEVEL))
    )
    assert t.incarnation(A0) == 4
    assert not t.add(owned(A0, 10**6, 3))


def test_controls_of_a_task_that_never_announced_are_kept():
    # written before announcements existed: nothing says they come from a zombie
    assert table_of(task(A0, 5, incarnation=2)).published(A0) == 5


def test_the_next_incarnation_is_above_every_one_any_record_named():
    # an older kwheel's tasks named their incarnation in every control, with no announcement:
    # the first opener after an upgrade must fence those ids too
    t = table_of(task(A0, 5, incarnation=9))
    assert t.incarnation(A0) == 9
    t.add(announce(A0, 10))
    assert not t.add(task(A0, 6, incarnation=9)) and t.incarnation(A0) == 10


def test_injectors_of_a_stream():
    t = table_of(
        injector(1, pid=INJ1, streams=["events"]),
        injector(1, pid=INJ2, streams=["events", "other"]),
        task(A0, 1, streams=["events"]),  # a task writing the stream is not an injector
    )
    assert t.injectors_of("events") == [INJ1, INJ2]
    assert t.injectors_of("other") == [INJ2]
    assert t.injectors_of("mid") == []


def test_injectors_of_looks_at_the_latest_record_only():
    t = table_of(injector(1, streams=["events"]), injector(2, streams=["other"]))
    assert t.injectors_of("events") == []
    assert t.injectors_of("other") == [INJ1]


# ---- Upstream: a task reading a source stream ----------------------------------------------------


def test_min_while_no_injector_published(pipeline):
    up = Upstream(pipeline, "A", 0)
    assert up.watermark(WatermarkTable(), at(p__events=10**9)) == MIN_WATERMARK


def test_min_while_only_injectors_of_other_streams_published(pipeline):
    up = Upstream(pipeline, "A", 0)
    t = table_of(injector(100, [("p.other", 0, 0)], streams=["other"]))
    assert up.watermark(t, at()) == MIN_WATERMARK


def test_injector_watermark_is_usable_once_own_partition_is_consumed_past_it(pipeline):
    t = table_of(injector(100, [("p.events", 0, 10), ("p.events", 1, 50)]))
    up0 = Upstream(pipeline, "A", 0)
    assert up0.watermark(t, at(p__events=9)) == MIN_WATERMARK
    assert up0.watermark(t, at(p__events=10)) == 100
    up1 = Upstream(pipeline, "A", 1)
    assert up1.watermark(t, at(p__events=10)) == MIN_WATERMARK
    assert up1.watermark(t, at(p__events=49)) == MIN_WATERMARK
    assert up1.watermark(t, at(p__events=50)) == 100


def test_positions_of_other_partitions_and_topics_are_ignored(pipeline):
    t = table_of(
        injector(
            100,
            [
                ("p.events", 0, 10),
                ("p.events", 1, 10**9),  # not this task's partition
                ("p.other", 0, 10**9),  # not an input topic of A
                ("p.C.events.repartition", 0, 10**9),  # C's input, not A's
            ],
        )
    )
    up = Upstream(pipeline, "A", 0)
    assert up.watermark(t, at(p__events=10)) == 100


def test_injector_with_no_position_for_the_partition_is_usable_at_once(pipeline):
    t = table_of(injector(100, []))
    assert Upstream(pipeline, "A", 0).watermark(t, at()) == 100


def test_min_over_several_injector_instances(pipeline):
    t = table_of(
        injector(100, [("p.events", 0, 10)], pid=INJ1),
        injector(70, [("p.events", 0, 20)], pid=INJ2),
    )
    up = Upstream(pipeline, "A", 0)
    assert up.watermark(t, at(p__events=10)) == MIN_WATERMARK  # INJ2's 70 not yet covered
    assert up.watermark(t, at(p__events=20)) == 70
    t.add(injector(300, [("p.events", 0, 20)], pid=INJ2))
    assert up.watermark(t, at(p__events=20)) == 100


def test_a_final_injector_counts_as_max(pipeline):
    t = table_of(
        injector(123, [("p.events", 0, 10)], pid=INJ1, final=True),
        injector(70, [("p.events", 0, 10)], pid=INJ2),
    )
    up = Upstream(pipeline, "A", 0)
    assert up.watermark(t, at(p__events=10)) == 70
    t.add(injector(80, [("p.events", 0, 10)], pid=INJ2, final=True))
    assert up.watermark(t, at(p__events=10)) == MAX_WATERMARK


def test_a_final_injector_still_waits_for_its_positions(pipeline):
    t = table_of(injector(MAX_WATERMARK, [("p.events", 0, 10)], final=True))
    up = Upstream(pipeline, "A", 0)
    assert up.watermark(t, at(p__events=9)) == MIN_WATERMARK
    assert up.watermark(t, at(p__events=10)) == MAX_WATERMARK


def test_usable_watermark_falls_back_to_an_older_record_whose_positions_were_passed(pipeline):
    t = table_of(
        injector(100, [("p.events", 0, 10)]),
        injector(200, [("p.events", 0, 20)]),
    )
    up = Upstream(pipeline, "A", 0)
    assert up.watermark(t, at(p__events=15)) == 100
    assert up.watermark(t, at(p__events=20)) == 200


def test_usable_watermark_never_goes_down(pipeline):
    t = table_of(injector(100, [("p.events", 0, 10)]))
    up = Upstream(pipeline, "A", 0)
    assert up.watermark(t, at(p__events=10)) == 100
    t.add(injector(200, [("p.events", 0, 20)]))
    assert up.watermark(t, at(p__events=15)) == 100  # newer record not passed yet
    assert up.watermark(t, at(p__events=0)) == 100  # even if the consumer is rewound
    assert up.watermark(t, at(p__events=20)) == 200


def test_a_lower_newer_record_does_not_lower_the_usable_watermark(pipeline):
    t = table_of(injector(100, [("p.events", 0, 10)]))
    up = Upstream(pipeline, "A", 0)
    assert up.watermark(t, at(p__events=10)) == 100
    t.add(injector(50, [("p.events", 0, 30)]))  # e.g. an instance restarted under the same name
    assert up.watermark(t, at(p__events=30)) == 100
    t.add(injector(MIN_WATERMARK, []))
    assert up.watermark(t, at(p__events=30)) == 100


def test_usable_watermark_survives_history_turning_over(pipeline):
    t = table_of(injector(100, [("p.events", 0, 10)]))
    up = Upstream(pipeline, "A", 0)
    assert up.watermark(t, at(p__events=10)) == 100
    for i in range(10 * LEVEL):
        t.add(injector(200 + i, [("p.events", 0, 1000 + i)]))
    assert up.watermark(t, at(p__events=10)) == 100


def test_upstreams_of_different_tasks_keep_their_own_usable_watermarks(pipeline):
    t = table_of(injector(100, [("p.events", 0, 10), ("p.events", 1, 10)]))
    up0, up1 = Upstream(pipeline, "A", 0), Upstream(pipeline, "A", 1)
    assert up0.watermark(t, at(p__events=10)) == 100
    assert up1.watermark(t, at(p__events=5)) == MIN_WATERMARK


# ---- Upstream: a task reading a computation's output -----------------------------------------


def test_downstream_is_min_while_one_upstream_task_never_published(pipeline):
    up = Upstream(pipeline, "B", 0)
    assert up.watermark(WatermarkTable(), at()) == MIN_WATERMARK
    t = table_of(task(A0, 100, [("p.mid", 0, 0), ("p.mid", 1, 0)]))
    assert up.watermark(t, at()) == MIN_WATERMARK


def test_downstream_is_min_over_all_upstream_tasks(pipeline):
    t = table_of(
        task(A0, 100, [("p.mid", 0, 5), ("p.mid", 1, 7)]),
        task(A1, 60, [("p.mid", 0, 9), ("p.mid", 1, 3)]),
    )
    b0 = Upstream(pipeline, "B", 0)
    assert b0.watermark(t, at(p__mid=8)) == MIN_WATERMARK  # A1's record covers p.mid[0] up to 9
    assert b0.watermark(t, at(p__mid=9)) == 60
    b1 = Upstream(pipeline, "B", 1)
    assert b1.watermark(t, at(p__mid=6)) == MIN_WATERMARK
    assert b1.watermark(t, at(p__mid=7)) == 60
    t.add(task(A1, 500, [("p.mid", 0, 9), ("p.mid", 1, 3)]))
    assert b0.watermark(t, at(p__mid=9)) == 100


def test_downstream_ignores_injectors_and_unrelated_tasks(pipeline):
    t = table_of(
        task(A0, 100),
        task(A1, 100),
        injector(5, [("p.mid", 0, 10**9)], streams=["mid"]),  # not a source stream: not consulted
        task(task_producer_id("C", 0), 1, streams=[]),
        task(task_producer_id("B", 0), 1, streams=[]),
    )
    assert Upstream(pipeline, "B", 0).watermark(t, at()) == 100


def test_upstream_task_watermark_max_means_done(pipeline):
    t = table_of(task(A0, MAX_WATERMARK), task(A1, MAX_WATERMARK))
    assert Upstream(pipeline, "B", 1).watermark(t, at()) == MAX_WATERMARK


# ---- Upstream: re-keyed and several inputs ------------------------------------------------------


REKEY0, REKEY1 = task_producer_id("C.rekey.events", 0), task_producer_id("C.rekey.events", 1)


def test_a_rekeyed_source_is_fed_by_the_stage_not_the_injectors(pipeline):
    up = Upstream(pipeline, "C", 3)
    assert up.input_topics == {"p.C.events.repartition"}
    assert [(f.stream, f.tasks, f.injected) for f in up.feeds] == [
        ("C.rekey.events", (REKEY0, REKEY1), False)
    ]


def test_rekeyed_input_is_checked_against_the_repartition_topic(pipeline):
    # C has 4 tasks though events has 2 partitions: task 3 only exists on the repartition topic
    up = Upstream(pipeline, "C", 3)
    positions = [
        ("p.events", 1, 10**9),
        ("p.C.events.repartition", 3, 7),
        ("p.C.events.repartition", 0, 10**9),
    ]
    t = table_of(task(REKEY0, 100, positions), task(REKEY1, 200, positions))
    assert up.watermark(t, at(p__events=10**9, p__C__events__repartition=6)) == MIN_WATERMARK
    assert up.watermark(t, at(p__C__events__repartition=7)) == 100


def test_computation_with_a_source_and_a_task_input_takes_the_min():
    p = Pipeline("q")
    p.stream("src", partitions=1, source=True)
    p.stream("side", partitions=1, source=True)
    p.stream("mid", partitions=1)
    p.computation("A", Nop, inputs=["src"], outputs=["mid"])
    p.computation("J", Nop, inputs=["mid", "side"])
    p.validate()
    up = Upstream(p, "J", 0)
    t = table_of(task(task_producer_id("A", 0), 500, [("q.mid", 0, 3)]))
    assert up.watermark(t, at(q__mid=3)) == MIN_WATERMARK  # no injector of "side" yet
    t.add(injector(200, [("q.side", 0, 4)], streams=["side"]))
    assert up.watermark(t, at(q__mid=3, q__side=4)) == 200
    # the task's positions must be passed too, on its own topic
    up2 = Upstream(p, "J", 0)
    assert up2.watermark(t, at(q__mid=2, q__side=4)) == MIN_WATERMARK


def test_dead_letter_producers_feed_readers_of_the_dead_letter_stream():
    p = Pipeline("q")
    p.stream("src", partitions=2, source=True)
    p.stream("dead", partitions=1)
    p.computation("A", Nop, inputs=["src"], dead_letter="dead")
    p.computation("D", Nop, inputs=["dead"])
    p.validate()
    up = Upstream(p, "D", 0)
    a0, a1 = task_producer_id("A", 0), task_producer_id("A", 1)
    assert [f.tasks for f in up.feeds] == [(a0, a1)]
    t = table_of(task(a0, 10, streams=["dead"]))
    assert up.watermark(t, at()) == MIN_WATERMARK
    t.add(task(a1, 20, streams=["dead"]))
    assert up.watermark(t, at()) == 10


def test_feeds_of_a_source_stream_have_no_tasks(pipeline):
    up = Upstream(pipeline, "A", 1)
    assert len(up.feeds) == 1
    assert up.feeds[0].stream == "events"
    assert up.feeds[0].injected is True
    assert up.feeds[0].tasks == ()
    assert up.partition == 1


def test_a_reader_far_behind_its_producer_still_advances(pipeline):
    # 64 kept controls froze a reader more than 64 controls behind until it caught up;
    # now the steps a far reader takes are about as long as it is behind, over 4 levels
    t = table_of(*(injector(i, [("p.events", 0, i)]) for i in range(1, 5001)))
    up = Upstream(pipeline, "A", 0)
    assert 50 < up.watermark(t, at(p__events=300)) <= 300
    assert 2000 < up.watermark(t, at(p__events=2500)) <= 2500
    assert up.watermark(t, at(p__events=5000)) == 5000


def test_a_worker_keeps_history_only_of_the_producers_feeding_its_tasks(pipeline):
    from kwheel.watermarks.upstream import feeding

    t = WatermarkTable(keeps_history=feeding(pipeline, ["B"]))  # B reads mid, written by A
    for i in range(1, 100):
        t.add(task(A0, i, positions=[("p.mid", 0, i)]))
        t.add(injector(i, [("p.events", 0, i)]))
    assert len(t.entries[A0]) > 1 and len(t.entries[INJ1]) == 1
    assert t.published(INJ1) == 99 and t.latest(INJ1).watermark == 99
    assert feeding(pipeline, ["A"])(injector(1)) and not feeding(pipeline, ["A"])(task(A0, 1))


# ---- operations: kwheel reset and kwheel injector retire ---------------------------------------


def reset(pid, incarnation, owner="reset") -> Control:
    return Control(
        pid, TASK, ["mid"], MIN_WATERMARK, [], 0, incarnation=incarnation, owner=owner, reset=True
    )


def retirement(pid=INJ1, positions=(), streams=("events",)) -> Control:
    return Control(
        pid, INJECTOR, list(streams), MAX_WATERMARK, list(positions), 0, final=True, retired=True
    )


def test_a_reset_task_is_forgotten_and_its_next_owner_starts_afresh(pipeline):
    t = table_of(announce(A0, 3), owned(A0, 9, 3, positions=[("p.mid", 0, 100)]))
    assert not t.add(reset(A0, 4))
    assert t.latest(A0) is None and t.published(A0) == MIN_WATERMARK
    assert t.incarnation(A0) == 4  # incarnations go on: the next opener fences every id used
    assert not t.add(owned(A0, 9, 3))  # the old owner's zombie is not heard
    t.add(announce(A0, 5, owner="new"))
    assert t.add(owned(A0, 2, 5, owner="new", positions=[("p.mid", 0, 150)]))
    t.add(task(A1, MAX_WATERMARK))
    up = Upstream(pipeline, "B", 0)
    # a reader past the old control's positions gets only what the new owner published
    assert up.watermark(t, at(p__mid=120)) == MIN_WATERMARK
    assert up.watermark(t, at(p__mid=150)) == 2


def test_a_reset_survives_compaction_of_the_old_controls():
    # compacted: the reset replaced the old controls (same key); the old announcement is
    # still there, older than the reset
    t = table_of(announce(A0, 3), reset(A0, 4), owned(A0, 9, 3))
    assert t.published(A0) == MIN_WATERMARK and t.owner(A0) == (4, "reset")


def test_a_retired_injector_counts_as_finished_once_its_positions_are_passed(pipeline):
    t = table_of(
        injector(5, pid=INJ1, positions=[("p.events", 0, 10)]),
        injector(50, pid=INJ2, positions=[("p.events", 0, 12)]),
    )
    up = Upstream(pipeline, "A", 0)
    assert up.watermark(t, at(p__events=20)) == 5  # INJ1 died at 5 and holds the stream
    t.add(retirement(INJ1, positions=[("p.events", 0, 30)]))
    assert up.watermark(t, at(p__events=20)) == 5  # not before what it may have sent
    assert up.watermark(t, at(p__events=30)) == 50
    assert t.published(INJ1) == MAX_WATERMARK  # a restart resumes from there


def test_a_retired_injector_that_comes_back_cannot_hold_the_stream_back(pipeline):
    t = table_of(injector(5, pid=INJ1), injector(50, pid=INJ2))
    t.add(retirement(INJ1, positions=[("p.events", 0, 30)]))
    assert not t.add(injector(6, pid=INJ1, positions=[("p.events", 0, 40)]))  # its zombie
    assert t.latest(INJ1).retired
    assert Upstream(pipeline, "A", 0).watermark(t, at(p__events=40)) == 50
    # compacted: the retirement has a key of its own, the zombie's control replaced the
    # instance's old ones; a new reader drops the zombie's all the same
    t2 = table_of(injector(50, pid=INJ2), retirement(INJ1), injector(6, pid=INJ1))
    assert Upstream(pipeline, "A", 0).watermark(t2, at(p__events=40)) == 50
