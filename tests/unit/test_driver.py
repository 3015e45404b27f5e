"""The in-process driver runs the worker's Task code without a broker: records, state,
watermarks, timers, dedup, errors and restarts behave as on Kafka, deterministically."""

from __future__ import annotations

import pytest

from kwheel import Computation, Input, Pipeline, Timer, Tumbling, WindowedAggregation
from kwheel.errors import KwheelError, RecordError
from kwheel.kafka.partitioner import partition_for
from kwheel.testing import END, PipelineDriver
from kwheel.watermarks import MIN_WATERMARK


class Counter(Computation):
    def process_record(self, ctx, record):
        if record.value.get("poison"):
            raise ValueError("poisoned")
        n = ctx.state.get("count", 0) + 1
        ctx.state["count"] = n
        ctx.produce(
            "counts", ctx.key, {"key": ctx.key, "count": n, "late": record.late}, record.timestamp
        )


class PerSecond(WindowedAggregation):
    windows = Tumbling(1000)

    def initial(self):
        return 0

    def add(self, acc, record):
        return acc + 1

    def emit(self, ctx, window, acc):
        ctx.produce("per_second", ctx.key, {"key": ctx.key, "start": window.start, "n": acc})


class Reminder(Computation):
    """Sets a wall-clock timer 1 s after a key's record (by the wall clock the record carries)."""

    def process_record(self, ctx, record):
        ctx.set_timer("remind", record.value["now"] + 1000, domain="wall")

    def process_timer(self, ctx, timer):
        ctx.produce(
            "reminders", ctx.key, {"key": ctx.key, "at": timer.timestamp, "domain": timer.domain}
        )


def two_stage(dead_letter: bool = False) -> Pipeline:
    """events -> counter -> counts -> per_second -> per_second (windowed, event-time timers)."""
    p = Pipeline("driven")
    p.stream("events", partitions=4, source=True)
    p.stream("counts", partitions=3)
    p.stream("per_second", partitions=2)
    if dead_letter:
        p.stream("dead", partitions=1, value="bytes")
    p.computation(
        "counter",
        Counter,
        inputs=["events"],
        outputs=["counts"],
        dead_letter="dead" if dead_letter else None,
    )
    p.computation("windows", PerSecond, inputs=["counts"], outputs=["per_second"])
    return p


def values(records, *fields):
    return sorted(tuple(r.value[f] for f in fields) for r in records)


@pytest.fixture
def driver():
    with PipelineDriver(two_stage(), wall_clock_ms=0) as d:
        yield d


def test_records_are_counted_per_key_on_the_partition_kafka_would_pick(driver):
    for i in range(30):
        driver.send("events", f"u{i % 4}", {"seq": i}, timestamp=1000 + i)
    counts = driver.outputs("counts")
    assert values(counts, "key", "count") == sorted(
        (f"u{k}", n) for k in range(4) for n in range(1, 9 if k < 2 else 8)
    )
    assert [r.value["count"] for r in counts if r.key == "u1"] == list(
        range(1, 9)
    )  # per key: in order
    assert driver.state("counter", "u1") == {"count": 8}
    assert driver.state("counter", "nobody") == {}
    for m in driver.messages("counts"):
        assert m.partition() == partition_for(m.key(), 3)
    assert driver.stats("counter")["processed"] == 30


def test_watermarks_flow_through_stages_and_fire_event_timers(driver):
    for i, ts in enumerate([100, 900, 1500, 2100, 2999]):
        driver.send("events", "a", {"seq": i}, timestamp=ts)
    assert driver.outputs("per_second") == []
    assert driver.watermark("counter") == MIN_WATERMARK
    assert [t.timestamp for t in driver.timers("windows", "a")] == [1000, 2000, 3000]
    driver.advance_watermark("events", 2000)
    assert driver.watermark("counter") == 2000
    assert driver.watermark("windows") == 2000  # counter has no timers: it passes the watermark on
    assert values(driver.outputs("per_second"), "start", "n") == [(0, 2), (1000, 1)]
    assert driver.timers("windows") == [Timer("a", "kwheel.window/2000/3000", 3000, "event")]
    driver.finish()
    assert values(driver.outputs("per_second"), "start", "n") == [(0, 2), (1000, 1), (2000, 2)]
    assert driver.timers("windows") == []
    assert driver.output_watermark("windows") == END


def test_a_record_behind_the_watermark_is_late(driver):
    driver.advance_watermark("events", 5000)
    driver.send("events", "a", {"seq": 1}, timestamp=4000)
    driver.send("events", "a", {"seq": 2}, timestamp=6000)
    assert [r.value["late"] for r in driver.outputs("counts")] == [True, False]
    assert driver.stats("counter")["late"] == 1


def test_a_lower_watermark_is_ignored(driver):
    driver.advance_watermark("events", 5000)
    driver.advance_watermark("events", 10)
    assert driver.watermark("counter") == 5000


def test_wall_timers_fire_when_the_test_moves_the_clock():
    p = Pipeline("walls")
    p.stream("pings", partitions=2, source=True)
    p.stream("reminders", partitions=1)
    p.computation("reminder", Reminder, inputs=["pings"], outputs=["reminders"])
    with PipelineDriver(p, wall_clock_ms=10_000) as d:
        d.send("pings", "k", {"now": d.wall_clock})
        assert d.timers("reminder") == [Timer("k", "remind", 11_000, "wall")]
        d.advance_wall_clock(999)
        assert d.outputs("reminders") == []
        d.advance_wall_clock(1)
        assert [(r.key, r.value) for r in d.outputs("reminders")] == [
            ("k", {"key": "k", "at": 11_000, "domain": "wall"})
        ]
        assert d.timers("reminder") == []
        with pytest.raises(ValueError, match="only moves forward"):
            d.advance_wall_clock(-1)


def test_a_record_id_seen_before_is_dropped(driver):
    rid = driver.send("events", "a", {"seq": 1}, timestamp=1)
    driver.run()
    driver.send("events", "a", {"seq": 1}, timestamp=1, id=rid)
    assert len(driver.outputs("counts")) == 1
    assert driver.stats("counter")["duplicates"] == 1


def test_a_failing_record_stops_the_run_and_is_replayed_next_time(driver):
    driver.send("events", "a", {"seq": 1}, timestamp=1)
    driver.send("events", "a", {"seq": 2, "poison": True}, timestamp=2)
    with pytest.raises(
        RecordError,
        match=r"computation 'counter' failed on key 'a' at driven.events\[\d\]@1: "
        r"ValueError: poisoned",
    ):
        driver.run()
    stats = driver.stats("counter")
    assert (stats["aborts"], stats["processed"], stats["commits"]) == (1, 1, 0)
    assert driver.state("counter", "a") == {}  # the whole batch was aborted
    with pytest.raises(RecordError, match="@1: ValueError"):  # and comes again
        driver.run()
    assert driver.stats("counter")["aborts"] == 2


def test_a_dead_letter_stream_takes_the_failing_record_with_its_error():
    with PipelineDriver(two_stage(dead_letter=True), wall_clock_ms=0) as d:
        d.send("events", "a", {"seq": 1, "poison": True}, timestamp=1)
        d.send("events", "a", {"seq": 2}, timestamp=2)
        assert values(d.outputs("counts"), "count") == [(1,)]
        [dead] = d.messages("dead")
        headers = dict(dead.headers())
        assert b"ValueError: poisoned" in headers["kwheel.error"]
        assert d.outputs("dead")[0].value == dead.value()


def test_a_copy_of_a_dead_lettered_record_is_a_duplicate_in_the_same_process():
    """The id of a dead-lettered record is seen like any other: a copy re-sent in a later
    batch, with no restart in between, is dropped, not dead-lettered again."""
    with PipelineDriver(two_stage(dead_letter=True), wall_clock_ms=0) as d:
        rid = d.send("events", "a", {"seq": 1, "poison": True}, timestamp=1)
        d.run()
        d.send("events", "a", {"seq": 1, "poison": True}, timestamp=1, id=rid)
        d.send("events", "a", {"seq": 2}, timestamp=2)
        d.run()
        assert len(d.messages("dead")) == 1
        assert values(d.outputs("counts"), "count") == [(1,)]
        assert d.stats("counter")["duplicates"] == 1


def test_state_timers_and_seen_ids_survive_a_restart_from_the_changelog_alone(driver):
    rid = driver.send("events", "a", {"seq": 1}, timestamp=1500)
    driver.send("events", "b", {"seq": 2}, timestamp=1600)
    driver.advance_watermark("events", 1000)
    driver.restart(wipe_state=True)
    assert driver.state("counter", "a") == {"count": 1}
    assert [(t.key, t.timestamp) for t in driver.timers("windows")] == [("a", 2000), ("b", 2000)]
    assert driver.watermark("counter") == 1000
    assert driver.stats("counter")["restored"] > 0
    driver.send("events", "a", {"seq": 1}, timestamp=1500, id=rid)  # a re-sent copy
    driver.send("events", "a", {"seq": 3}, timestamp=1700)
    driver.finish()
    assert values(driver.outputs("counts"), "key", "count") == [("a", 1), ("a", 2), ("b", 1)]
    assert driver.stats("counter")["duplicates"] == 1
    assert values(driver.outputs("per_second"), "key", "start", "n") == [
        ("a", 1000, 2),
        ("b", 1000, 1),
    ]


def test_only_runs_the_named_computation_fed_directly():
    with PipelineDriver(two_stage(), only="windows", wall_clock_ms=0) as d:
        assert d.fed == ["events", "counts"]
        d.send("counts", "x", {"count": 1}, timestamp=10)
        d.send("counts", "x", {"count": 2}, timestamp=20)
        d.advance_watermark("counts", 1000)
        assert values(d.outputs("per_second"), "key", "n") == [("x", 2)]
        with pytest.raises(KwheelError, match="'counter' is not running here"):
            d.state("counter", "x")
    with PipelineDriver(two_stage(), wall_clock_ms=0) as d:
        with pytest.raises(KwheelError, match="stream 'counts' is written by computation"):
            d.send("counts", "x", {})
        with pytest.raises(KwheelError, match="unknown stream 'nope'"):
            d.advance_watermark("nope", 1)
    with pytest.raises(KwheelError, match="unknown computation 'nope'"):
        PipelineDriver(two_stage(), only="nope")


def test_a_rekeyed_input_goes_through_its_repartition_topic():
    p = Pipeline("rekeyed")
    p.stream("events", partitions=4, source=True)
    p.stream("counts", partitions=3)
    p.computation(
        "counter",
        Counter,
        inputs=[Input("events", key_by=lambda r: r.value["country"])],
        outputs=["counts"],
        partitions=3,
    )
    with PipelineDriver(p, wall_clock_ms=0) as d:
        for i in range(20):
            d.send("events", f"user{i}", {"country": ["de", "fr", "jp"][i % 3]}, timestamp=i)
        assert d.state("counter", "de") == {"count": 7}
        assert values(d.outputs("counts"), "key", "count")[-1] == ("jp", 6)
        assert len(d.log.messages("rekeyed.counter.events.repartition")) == 20


def test_runs_are_deterministic():
    def run():
        with PipelineDriver(two_stage(), wall_clock_ms=0) as d:
            for i in range(200):
                d.send(
                    "events",
                    f"u{i % 7}",
                    {"seq": i},
                    timestamp=i * 37 % 5000,
                    id=i.to_bytes(4, "big"),
                )
                if i % 50 == 49:
                    d.advance_watermark("events", i * 20)
            d.finish()
            return [
                (r.key, r.value, r.timestamp, r.id)
                for s in ("counts", "per_second")
                for r in d.outputs(s)
            ]

    first = run()
    assert len(first) > 200
    assert run() == first


def test_a_key_read_directly_and_through_a_repartition_topic_has_one_state():
    p = Pipeline("mixed")
    p.stream("a", partitions=4, source=True)
    p.stream("b", partitions=4, source=True)
    p.stream("counts", partitions=1)
    p.computation(
        "counter",
        Counter,
        inputs=["a", Input("b", key_by=lambda r: r.value["k"])],
        outputs=["counts"],
    )
    with PipelineDriver(p, wall_clock_ms=0) as d:
        for k in ("w", "x", "y", "z"):
            d.send("a", k, {}, timestamp=1)
            d.send("b", "other", {"k": k}, timestamp=2)
        assert sorted((r.key, r.value["count"]) for r in d.outputs("counts")) == [
            (k, n) for k in ("w", "x", "y", "z") for n in (1, 2)
        ]


class Deadline(Computation):
    """Every key's timer at the same time, and a record after it: the epoch-aligned window case."""

    def process_record(self, ctx, record):
        ctx.set_timer("close", 1000)
        ctx.produce(
            "closed",
            ctx.key,
            {"key": ctx.key, "at": ctx.low_watermark, "late": record.late},
            record.timestamp,
        )

    def process_timer(self, ctx, timer):
        ctx.produce(
            "closed",
            ctx.key,
            {"key": ctx.key, "fired": timer.timestamp, "at": ctx.low_watermark},
            timer.timestamp,
        )


def test_timers_that_close_at_once_fire_in_bounded_transactions(monkeypatch):
    # one round fired everything due in one transaction: with 1M keys, past the transaction
    # timeout, it aborted and replayed the same forever
    from kwheel.runtime import task as task_module

    monkeypatch.setattr(task_module, "MAX_FIRES_PER_TICK", 50)
    p = Pipeline("deadline")
    p.stream("events", partitions=1, value="json", source=True)
    p.stream("closed", partitions=1, value="json")
    p.computation("deadline", Deadline, inputs=["events"], outputs=["closed"])
    with PipelineDriver(p) as d:
        for i in range(400):
            d.send("events", f"k{i}", {}, timestamp=i)
        d.run()
        task = d._tasks["deadline"][0]
        commits = task.counters.commits
        d._fed_watermarks["events"] = 5000
        d._step("deadline")  # one tick: 50 fired, the watermark held where the other 350 wait
        assert task.timers_left and task.input_watermark == 1000
        d.run()
        fired = [r.value for r in d.outputs("closed") if "fired" in r.value]
        assert sorted(v["key"] for v in fired) == sorted(f"k{i}" for i in range(400))
        assert task.counters.commits - commits >= 400 // 50  # at most 50 firings a transaction
        assert d.watermark("deadline") == 5000
        d.send("events", "late", {}, timestamp=999)
        d.send("events", "on-time", {}, timestamp=5000)
        d.run()
        late = {r.value["key"]: r.value["late"] for r in d.outputs("closed") if "late" in r.value}
        assert late["late"] and not late["on-time"]


class Hoarder(Computation):
    """Keeps what the record says in its key's state."""

    def process_record(self, ctx, record):
        ctx.state["v"] = eval(record.value["v"])  # noqa: S307 - test input: a Python literal to keep
        ctx.produce("closed", ctx.key, {"key": ctx.key}, record.timestamp)


@pytest.mark.parametrize(
    "literal", ["'x' * 1_100_000", "1 << 9_000_000", "{('a', i): i for i in range(200_000)}"]
)
def test_a_state_over_a_changelog_record_is_an_error_of_its_record(literal):
    # estimated from above without encoding: a big int or a tuple key must not slip through
    p = Pipeline("hoard")
    p.stream("events", partitions=1, value="json", source=True)
    p.stream("closed", partitions=1, value="json")
    p.stream("dead", partitions=1, value="bytes")
    p.computation("hoarder", Hoarder, inputs=["events"], outputs=["closed"], dead_letter="dead")
    with PipelineDriver(p) as d:
        d.send("events", "big", {"v": literal})
        d.send("events", "small", {"v": "1"})
        d.run()
        assert [r.key for r in d.outputs("closed")] == ["small"]
        [dead] = d.messages("dead")
        assert b"StateTooLargeError" in dict(dead.headers())["kwheel.error"]
        assert d.state("hoarder", "big") == {}
