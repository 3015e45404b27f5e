"""Pipeline graph: declaration, validation, partition resolution and Kafka names."""

from __future__ import annotations

import pytest

from kwheel import Computation, Input, Pipeline
from kwheel.errors import PipelineError
from kwheel.pipeline import CHANGELOG_DELETE_RETENTION_MS, Route, TaskInput
from kwheel.serde import JSON, STR


class Nop(Computation):
    def process_record(self, ctx, record):
        pass


def by_country(record):
    return record.value["country"]


def simple() -> Pipeline:
    p = Pipeline("p")
    p.stream("events", partitions=4, source=True)
    p.stream("counts", partitions=4)
    p.computation("counter", Nop, inputs=["events"], outputs=["counts"])
    return p


# ---- declaring streams -------------------------------------------------------------------


def test_stream_topic_is_prefixed_with_pipeline_name():
    p = Pipeline("shop")
    s = p.stream("orders", partitions=3)
    assert s.topic == "shop.orders"
    assert s.partitions == 3


def test_stream_explicit_topic_is_kept():
    p = Pipeline("shop")
    assert p.stream("orders", topic="legacy-orders").topic == "legacy-orders"


def test_stream_default_serdes_are_str_key_and_json_value():
    s = Pipeline("p").stream("s")
    assert s.key_serde is STR
    assert s.value_serde is JSON
    assert s.partitions == 1
    assert s.source is False


def test_stream_declared_twice_is_rejected():
    p = Pipeline("p")
    p.stream("s")
    with pytest.raises(PipelineError, match=r"pipeline 'p': stream 's' declared twice"):
        p.stream("s")


@pytest.mark.parametrize("bad", [0, -1, 1.5, "4", None])
def test_stream_bad_partitions_is_rejected(bad):
    with pytest.raises(PipelineError, match=r"stream 's': partitions must be a positive integer"):
        Pipeline("p").stream("s", partitions=bad)


def test_stream_unknown_serde_is_a_pipeline_error_naming_the_stream():
    with pytest.raises(PipelineError, match=r"stream 's': unknown serde 'xml'"):
        Pipeline("p").stream("s", value="xml")


def test_stream_missing_avro_schema_is_a_pipeline_error(tmp_path):
    with pytest.raises(PipelineError, match=r"stream 's': Avro schema file not found"):
        Pipeline("p").stream("s", value=f"avro:{tmp_path / 'nope.avsc'}")


def test_computation_declared_twice_is_rejected():
    p = simple()
    with pytest.raises(PipelineError, match=r"pipeline 'p': computation 'counter' declared twice"):
        p.computation("counter", Nop, inputs=["events"])


def test_computation_string_inputs_become_direct_inputs():
    p = simple()
    assert p.computations["counter"].inputs == [Input("events")]


# ---- validation errors ---------------------------------------------------------------------


def test_validate_returns_the_pipeline():
    p = simple()
    assert p.validate() is p


def test_pipeline_without_computations_is_rejected():
    p = Pipeline("empty")
    p.stream("s", source=True)
    with pytest.raises(PipelineError, match=r"pipeline 'empty' has no computations"):
        p.validate()


def test_computation_without_inputs_is_rejected():
    p = Pipeline("p")
    p.stream("out")
    p.computation("c", Nop, inputs=[], outputs=["out"])
    with pytest.raises(PipelineError, match=r"computation 'c' has no inputs"):
        p.validate()


def test_computation_factory_must_be_callable():
    p = Pipeline("p")
    p.stream("a", source=True)
    p.computation("c", 42, inputs=["a"])
    with pytest.raises(
        PipelineError, match=r"computation 'c': 42 is not a Computation class or factory"
    ):
        p.validate()


def test_unknown_input_stream_is_rejected_listing_declared_streams():
    p = Pipeline("p")
    p.stream("b", source=True)
    p.stream("a", source=True)
    p.computation("c", Nop, inputs=["missing"])
    with pytest.raises(
        PipelineError,
        match=r"computation 'c' reads unknown stream 'missing' \(declared streams: a, b\)",
    ):
        p.validate()


def test_unknown_stream_message_says_none_when_nothing_declared():
    p = Pipeline("p")
    p.computation("c", Nop, inputs=["missing"])
    with pytest.raises(PipelineError, match=r"unknown stream 'missing' \(declared streams: none\)"):
        p.validate()


def test_unknown_output_stream_is_rejected():
    p = Pipeline("p")
    p.stream("a", source=True)
    p.computation("c", Nop, inputs=["a"], outputs=["nowhere"])
    with pytest.raises(PipelineError, match=r"computation 'c' writes unknown stream 'nowhere'"):
        p.validate()


def test_unknown_dead_letter_stream_is_rejected():
    p = Pipeline("p")
    p.stream("a", source=True)
    p.computation("c", Nop, inputs=["a"], dead_letter="dlq")
    with pytest.raises(
        PipelineError, match=r"computation 'c' dead-letters to unknown stream 'dlq'"
    ):
        p.validate()


def test_unknown_rekeyed_input_stream_is_rejected():
    p = Pipeline("p")
    p.computation("c", Nop, inputs=[Input("ghost", key_by=by_country)])
    with pytest.raises(PipelineError, match=r"computation 'c' reads unknown stream 'ghost'"):
        p.validate()


def test_stream_read_but_never_produced_is_rejected():
    p = Pipeline("p")
    p.stream("a")  # not source=True, nobody writes it
    p.computation("c", Nop, inputs=["a"])
    with pytest.raises(
        PipelineError,
        match=r"stream 'a' \(read by computation 'c'\) has no producer: "
        r"no computation outputs it and it is not declared source=True",
    ):
        p.validate()


def test_stream_produced_by_a_later_computation_counts_as_produced():
    p = Pipeline("p")
    p.stream("src", source=True)
    p.stream("mid")
    # the reader is declared before the writer
    p.computation("reader", Nop, inputs=["mid"])
    p.computation("writer", Nop, inputs=["src"], outputs=["mid"])
    p.validate()


def test_dead_letter_stream_counts_as_produced():
    p = Pipeline("p")
    p.stream("src", source=True)
    p.stream("dlq")
    p.computation("c", Nop, inputs=["src"], dead_letter="dlq")
    p.computation("inspect", Nop, inputs=["dlq"])
    p.validate()


def test_mismatched_direct_input_partitions_are_rejected():
    p = Pipeline("p")
    p.stream("a", partitions=2, source=True)
    p.stream("b", partitions=3, source=True)
    p.computation("join", Nop, inputs=["a", "b"])
    with pytest.raises(
        PipelineError,
        match=r"computation 'join': inputs have mismatched partition counts \(a=2, b=3\); "
        r"co-partitioned inputs must match, or re-key one with key_by",
    ):
        p.validate()


def test_mismatched_partitions_are_fine_when_one_input_is_rekeyed():
    p = Pipeline("p")
    p.stream("a", partitions=2, source=True)
    p.stream("b", partitions=3, source=True)
    p.computation("join", Nop, inputs=["a", Input("b", key_by=by_country)])
    p.validate()
    assert p.computations["join"].partitions == 2


def test_explicit_partitions_contradicting_direct_inputs_are_rejected():
    p = Pipeline("p")
    p.stream("a", partitions=2, source=True)
    p.computation("c", Nop, inputs=["a"], partitions=5)
    with pytest.raises(
        PipelineError, match=r"computation 'c': partitions=5 but its inputs have 2 partitions"
    ):
        p.validate()


# regression: a computation's own partitions= was never range-checked
@pytest.mark.parametrize("bad", [-3, 0, True, 2.0, "4"])
def test_bad_computation_partitions_are_rejected(bad):
    p = Pipeline("p")
    p.stream("a", partitions=2, source=True)
    with pytest.raises(
        PipelineError, match=r"computation 'c': partitions must be a positive integer"
    ):
        p.computation("c", Nop, inputs=[Input("a", key_by=by_country)], partitions=bad)
        p.validate()


# ---- partition resolution -----------------------------------------------------------------


def test_partitions_come_from_direct_inputs():
    p = simple().validate()
    assert p.computations["counter"].partitions == 4


def test_explicit_partitions_equal_to_direct_inputs_are_accepted():
    p = Pipeline("p")
    p.stream("a", partitions=2, source=True)
    p.computation("c", Nop, inputs=["a"], partitions=2)
    assert p.validate().computations["c"].partitions == 2


def test_rekeyed_only_partitions_default_to_max_of_inputs():
    p = Pipeline("p")
    p.stream("a", partitions=2, source=True)
    p.stream("b", partitions=6, source=True)
    p.computation("c", Nop, inputs=[Input("a", key_by=by_country), Input("b", key_by=by_country)])
    assert p.validate().computations["c"].partitions == 6


def test_rekeyed_only_partitions_can_be_chosen_explicitly():
    p = Pipeline("p")
    p.stream("a", partitions=2, source=True)
    p.computation("c", Nop, inputs=[Input("a", key_by=by_country)], partitions=8)
    assert p.validate().computations["c"].partitions == 8


def test_validate_twice_is_stable():
    p = Pipeline("p")
    p.stream("a", partitions=2, source=True)
    p.stream("b", partitions=6, source=True)
    p.computation("d", Nop, inputs=["a"])
    p.computation("r", Nop, inputs=[Input("b", key_by=by_country)])
    p.validate()
    p.validate()
    assert p.computations["d"].partitions == 2
    assert p.computations["r"].partitions == 6


# ---- Kafka names, routes, topics ----------------------------------------------------------


def test_kafka_names():
    p = simple()
    assert p.group_id("counter") == "p.counter"
    assert p.changelog_topic("counter") == "p.counter.changelog"
    assert p.repartition_topic("counter", "events") == "p.counter.events.repartition"
    assert p.transactional_id("counter", 3) == "p.counter.3"


def test_routes_of_a_stream_read_directly_is_only_its_topic():
    assert simple().routes("events") == [Route("p.events", None)]


def test_routes_include_a_repartition_route_per_rekeying_consumer():
    p = Pipeline("p")
    p.stream("src", partitions=4, source=True)
    p.stream("events", partitions=4)
    p.computation("writer", Nop, inputs=["src"], outputs=["events"])
    p.computation("direct", Nop, inputs=["events"])
    p.computation("by_country", Nop, inputs=[Input("events", key_by=by_country)])
    routes = p.routes("events")
    assert routes == [
        Route("p.events", None),
        Route("p.by_country.events.repartition", by_country),
    ]


def test_a_re_keyed_source_stream_is_routed_through_a_stage_that_reads_its_own_topic():
    # outside producers write only the stream's topic: what they write must reach by_country
    p = Pipeline("p")
    p.stream("events", partitions=4, source=True)
    p.computation("by_country", Nop, inputs=[Input("events", key_by=by_country)], partitions=3)
    p.validate().validate()  # twice: the stage is added once
    assert p.routes("events") == [Route("p.events", None)]
    stage = p.computations["by_country.rekey.events"]
    assert (
        [i.stream for i in stage.inputs] == ["events"]
        and stage.partitions == 4
        and stage.feeds == "by_country"
    )
    assert stage.outputs == ["by_country.rekey.events"]
    assert p.streams["by_country.rekey.events"].topic == "p.by_country.events.repartition"
    assert p.streams["by_country.rekey.events"].partitions == 3
    assert [ti.topic for ti in p.task_inputs("by_country")] == ["p.by_country.events.repartition"]
    assert "p.by_country.rekey.events.changelog" in p.topics()


def test_routes_of_unrelated_stream_ignore_other_rekeyings():
    p = Pipeline("p")
    p.stream("a", source=True)
    p.stream("b", source=True)
    p.computation("c", Nop, inputs=[Input("a", key_by=by_country), "b"])
    assert p.routes("b") == [Route("p.b", None)]


def test_task_inputs_direct_and_repartitioned():
    p = Pipeline("p")
    a = p.stream("a", partitions=2, source=True)
    b = p.stream("b", partitions=5, source=True)
    p.computation("c", Nop, inputs=["a", Input("b", key_by=by_country)])
    assert p.task_inputs("c") == [
        TaskInput("p.a", a, False),
        TaskInput("p.c.b.repartition", b, True),
    ]


def test_topics_of_simple_pipeline():
    assert simple().topics() == {
        "p.events": (4, {}),
        "p.counts": (4, {}),
        "p.counter.changelog": (
            4,
            {"cleanup.policy": "compact", "delete.retention.ms": "86400000"},
        ),
        "p.watermarks": (1, {"cleanup.policy": "compact"}),
    }


def test_changelog_topics_keep_tombstones_as_long_as_the_stale_store_rule_assumes():
    from kwheel.state.restore import STALE_AFTER_MS

    p = Pipeline("p")
    p.stream("events", partitions=3, source=True)
    p.stream("mid", partitions=3)
    p.computation("a", Nop, inputs=["events"], outputs=["mid"])
    p.computation("b", Nop, inputs=[Input("mid", key_by=by_country)], partitions=5)
    changelogs = {n: c for n, (_, c) in p.topics().items() if n.endswith(".changelog")}
    assert set(changelogs) == {"p.a.changelog", "p.b.changelog"}
    for conf in changelogs.values():
        assert conf["delete.retention.ms"] == str(CHANGELOG_DELETE_RETENTION_MS) == "86400000"
    # a store older than the stale threshold is rebuilt before any tombstone it missed can go
    assert STALE_AFTER_MS == 20 * 3600 * 1000 < CHANGELOG_DELETE_RETENTION_MS


def test_watermark_topic_is_named_after_the_pipeline():
    assert simple().watermark_topic() == "p.watermarks"
    assert Pipeline("other").watermark_topic() == "other.watermarks"


def test_topics_have_one_watermark_topic_whatever_the_computations():
    p = Pipeline("p")
    p.stream("events", partitions=3, source=True)
    p.stream("mid", partitions=3)
    p.computation("a", Nop, inputs=["events"], outputs=["mid"])
    p.computation("b", Nop, inputs=["mid"])
    topics = p.topics()
    assert topics["p.watermarks"] == (1, {"cleanup.policy": "compact"})
    assert [t for t in topics if t.endswith("watermarks")] == ["p.watermarks"]


def test_topics_repartition_topic_has_the_computations_partition_count():
    p = Pipeline("p")
    p.stream("events", partitions=3, source=True)
    p.computation("agg", Nop, inputs=[Input("events", key_by=by_country)], partitions=7)
    topics = p.topics()
    assert topics["p.events"] == (3, {})
    assert topics["p.agg.events.repartition"] == (7, {})
    assert topics["p.agg.changelog"] == (
        7,
        {"cleanup.policy": "compact", "delete.retention.ms": "86400000"},
    )


def test_topics_validates_first():
    p = Pipeline("p")
    p.stream("a")
    p.computation("c", Nop, inputs=["a"])
    with pytest.raises(PipelineError, match=r"has no producer"):
        p.topics()
