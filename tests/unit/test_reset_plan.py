"""What `kwheel reset` deletes, and when it refuses, worked out from the pipeline graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from kwheel import Computation, Input, Pipeline
from kwheel.errors import ConfigError
from kwheel.reset import plan_reset


class Nop(Computation):
    def process_record(self, ctx, record):
        pass


def country(record):
    return record.value["country"]


@pytest.fixture
def pipeline() -> Pipeline:
    """events (source) -> A -> mid -> B;  events re-keyed by C;  mid re-keyed by D."""
    p = Pipeline("p")
    p.stream("events", partitions=2, source=True)
    p.stream("mid", partitions=2)
    p.computation("A", Nop, inputs=["events"], outputs=["mid"])
    p.computation("B", Nop, inputs=["mid"])
    p.computation("C", Nop, inputs=[Input("events", key_by=country)], partitions=3)
    p.computation("D", Nop, inputs=[Input("mid", key_by=country)], partitions=3)
    return p.validate()


STATE = Path("/var/lib/kwheel")


def test_resetting_everything(pipeline):
    plan = plan_reset(pipeline, [], STATE)
    assert plan.computations == ["A", "B", "C", "D", "C.rekey.events"]
    assert plan.from_start == {"p.A": ["p.events"], "p.C.rekey.events": ["p.events"]}
    assert plan.to_end == {"p.B": ["p.mid"]}  # A writes mid again: B skips what it wrote before
    assert plan.emptied == ["p.C.events.repartition", "p.D.mid.repartition"]
    assert plan.changelogs["p.C.changelog"] == 3 and len(plan.changelogs) == 5
    assert plan.tasks == {"A": 2, "B": 2, "C": 3, "D": 3, "C.rekey.events": 2}
    assert STATE / "p" / "C.rekey.events" in plan.stores
    assert plan.groups["C.rekey.events"] == "p.C.rekey.events"


def test_a_computation_that_reads_from_computations_not_reset_reads_from_the_start(pipeline):
    plan = plan_reset(pipeline, ["B"], STATE)
    assert plan.computations == ["B"] and plan.from_start == {"p.B": ["p.mid"]}
    assert plan.to_end == {} and plan.emptied == []
    assert plan.stores == [STATE / "p" / "B"]


def test_a_re_keyed_source_is_reset_with_its_re_keying_stage(pipeline):
    plan = plan_reset(pipeline, ["C"], STATE)
    assert plan.computations == ["C", "C.rekey.events"]
    assert plan.emptied == ["p.C.events.repartition"]
    assert plan.from_start == {"p.C.rekey.events": ["p.events"]}


def test_resetting_a_computation_whose_outputs_others_read_is_refused(pipeline):
    with pytest.raises(
        ConfigError, match="computation 'A' writes stream 'mid', which computation 'B' reads"
    ):
        plan_reset(pipeline, ["A"], STATE)
    plan = plan_reset(pipeline, ["A", "B", "D"], STATE)
    assert plan.to_end == {"p.B": ["p.mid"]} and plan.emptied == ["p.D.mid.repartition"]


def test_a_re_keyed_input_whose_writer_is_not_reset_is_refused(pipeline):
    # D's repartition topic holds only what D has not processed yet (purged after commits)
    with pytest.raises(ConfigError, match="reset 'A', which writes it, too"):
        plan_reset(pipeline, ["D"], STATE)


def test_a_stream_written_by_a_computation_reset_and_one_not_is_refused():
    p = Pipeline("q")
    p.stream("events", partitions=1, source=True)
    p.stream("mid", partitions=1)
    p.computation("A", Nop, inputs=["events"], outputs=["mid"])
    p.computation("A2", Nop, inputs=["events"], outputs=["mid"])
    p.computation("B", Nop, inputs=["mid"])
    with pytest.raises(ConfigError, match="written by 'A' \\(reset\\) and by 'A2' \\(not reset\\)"):
        plan_reset(p.validate(), ["A", "B"], STATE)


def test_an_unknown_computation_is_named(pipeline):
    with pytest.raises(
        ConfigError, match="unknown computation 'X' in pipeline 'p' \\(known: A, B, C, D"
    ):
        plan_reset(pipeline, ["X"], STATE)


def test_the_plan_says_what_it_deletes(pipeline):
    text = "\n".join(plan_reset(pipeline, ["B"], STATE).describe())
    assert "consumer group p.B: committed offsets deleted" in text
    assert "changelog topic p.B.changelog: deleted and created again, empty" in text
    assert "published watermarks of 2 tasks: forgotten" in text
    assert str(STATE / "p" / "B") in text
