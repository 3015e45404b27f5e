"""KeyState copy-on-write, and TaskContext.produce with deterministic derived ids."""

from __future__ import annotations

import pytest

from kwheel import Computation, Input, Pipeline
from kwheel.errors import PipelineError, SerdeError
from kwheel.ids import derive
from kwheel.kafka.writer import StreamWriter
from kwheel.record import TimeDomain
from kwheel.runtime.context import KeyState, TaskContext
from kwheel.state.layout import decode_timer, encode_timer, key_tag, split_timer_key, timer_key
from kwheel.watermarks import MIN_WATERMARK

# ---- KeyState --------------------------------------------------------------------------------


def test_reads_do_not_copy_or_mark_changed():
    original = {"count": 1}
    st = KeyState(original)
    assert st["count"] == 1
    assert st.get("count") == 1
    assert st.get("missing", "dflt") == "dflt"
    assert "count" in st and "missing" not in st
    assert len(st) == 1
    assert list(st) == ["count"]
    assert dict(st.items()) == {"count": 1}
    assert st.changed is False
    assert st.snapshot() is original


def test_getitem_missing_raises_key_error():
    with pytest.raises(KeyError):
        KeyState({})["nope"]


def test_setitem_copies_and_leaves_original_untouched():
    original = {"count": 1}
    st = KeyState(original)
    st["count"] = 2
    st["new"] = "x"
    assert original == {"count": 1}
    assert st.snapshot() == {"count": 2, "new": "x"}
    assert st.snapshot() is not original
    assert st.changed is True


def test_copy_is_made_once():
    st = KeyState({"a": 1})
    st["b"] = 2
    first = st.snapshot()
    st["c"] = 3
    assert st.snapshot() is first


def test_setting_the_same_value_still_counts_as_changed():
    st = KeyState({"a": 1})
    st["a"] = 1
    assert st.changed is True


def test_del_copies_and_marks_changed():
    original = {"a": 1, "b": 2}
    st = KeyState(original)
    del st["a"]
    assert original == {"a": 1, "b": 2}
    assert st.snapshot() == {"b": 2}
    assert st.changed is True


def test_del_missing_raises_and_does_not_mark_changed():
    original = {"a": 1}
    st = KeyState(original)
    with pytest.raises(KeyError):
        del st["missing"]
    assert st.changed is False
    assert st.snapshot() is original


def test_pop_present_returns_value_and_copies():
    original = {"a": 1}
    st = KeyState(original)
    assert st.pop("a") == 1
    assert original == {"a": 1}
    assert st.snapshot() == {}
    assert st.changed is True


def test_pop_missing_with_default_returns_default_unchanged():
    st = KeyState({"a": 1})
    assert st.pop("missing", None) is None
    assert st.pop("missing", 7) == 7
    assert st.changed is False


def test_pop_missing_without_default_raises():
    st = KeyState({})
    with pytest.raises(KeyError):
        st.pop("missing")
    assert st.changed is False


def test_clear_copies_and_marks_changed():
    original = {"a": 1, "b": 2}
    st = KeyState(original)
    st.clear()
    assert original == {"a": 1, "b": 2}
    assert st.snapshot() == {}
    assert len(st) == 0
    assert st.changed is True


def test_clear_of_empty_state_is_not_a_change():
    st = KeyState({})
    st.clear()
    assert st.changed is False


def test_repr_shows_the_data():
    assert repr(KeyState({"a": 1})) == "KeyState({'a': 1})"


# ---- TaskContext.produce ------------------------------------------------------------------------


class Nop(Computation):
    def process_record(self, ctx, record):
        pass


def country(record):
    return record.value["country"]


@pytest.fixture
def pipeline() -> Pipeline:
    p = Pipeline("p")
    p.stream("events", partitions=2, source=True)
    p.stream("counts", partitions=2)
    p.stream("raw", partitions=2, key="bytes", value="bytes")
    p.computation("counter", Nop, inputs=["events"], outputs=["counts", "raw"])
    p.computation("by_country", Nop, inputs=[Input("counts", key_by=country)])
    return p.validate()


@pytest.fixture
def ctx(pipeline) -> TaskContext:
    return TaskContext(StreamWriter(pipeline, ["counts", "raw"]))


PARENT = b"\x11" * 16


def run(ctx: TaskContext, parent: bytes) -> list:
    """One call's outputs (the context collects the whole batch's)."""
    mark = len(ctx.outputs)
    ctx.begin("user-1", key_tag("user-1"), KeyState({}), parent, 1000)
    ctx.produce("raw", b"k", b"v1")
    ctx.produce("raw", b"k", b"v2")
    ctx.produce("raw", b"k", b"v3")
    return ctx.outputs[mark:]


def test_produce_ids_are_derived_from_parent_in_order(ctx):
    outputs = run(ctx, PARENT)
    assert [m[4] for m in outputs] == [derive(PARENT, 0), derive(PARENT, 1), derive(PARENT, 2)]
    assert len({m[4] for m in outputs}) == 3


def test_same_parent_gives_same_ids_on_replay(ctx):
    first = run(ctx, PARENT)
    second = run(ctx, PARENT)
    assert first == second


def test_different_parent_gives_different_ids(ctx):
    a = {m[4] for m in run(ctx, PARENT)}
    b = {m[4] for m in run(ctx, b"\x22" * 16)}
    assert not a & b


def test_begin_keeps_the_batch_outputs_and_resets_the_counter(ctx):
    run(ctx, PARENT)
    ctx.begin("user-2", key_tag("user-2"), KeyState({}), PARENT, 5)
    assert len(ctx.outputs) == 3
    assert ctx.key == "user-2"
    ctx.produce("raw", b"k", b"v")
    assert ctx.outputs[3][4] == derive(PARENT, 0)


def test_produce_encodes_with_stream_serdes_and_default_timestamp(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 1234)
    ctx.produce("raw", b"key", b"\x00value")
    assert ctx.outputs == [("p.raw", b"key", b"\x00value", 1234, derive(PARENT, 0), -1)]


def test_produce_explicit_timestamp_wins(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 1234)
    ctx.produce("raw", b"k", b"v", timestamp=99.0)
    assert ctx.outputs[0][3] == 99
    assert isinstance(ctx.outputs[0][3], int)


def test_produce_to_rekeyed_stream_also_writes_repartition_topic(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 7)
    ctx.produce("counts", "user-1", {"country": "fr", "count": 1})
    rid = derive(PARENT, 0)
    value = b'{"country":"fr","count":1}'
    assert ctx.outputs == [
        ("p.counts", b"user-1", value, 7, rid, -1),
        # keyed by the tag; by_country reads nothing directly, so the tag places it too
        ("p.by_country.counts.repartition", key_tag("fr"), value, 7, rid, -1),
    ]


def test_produce_to_stream_that_is_not_an_output_is_rejected(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    with pytest.raises(
        PipelineError, match=r"cannot produce to 'events': not an output of this computation"
    ):
        ctx.produce("events", "k", {})
    assert ctx.outputs == []


def test_produce_with_bad_key_names_the_stream(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    with pytest.raises(SerdeError, match=r"key for stream 'raw': bytes serde needs bytes, got str"):
        ctx.produce("raw", "not-bytes", b"v")


def test_produce_with_bad_value_names_the_stream(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    with pytest.raises(
        SerdeError, match=r"value for stream 'counts': value is not JSON-serialisable"
    ):
        ctx.produce("counts", "k", {"s": {1}})


# ---- TaskContext timers -----------------------------------------------------------------------


def test_set_timer_defaults_to_the_event_domain(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    ctx.set_timer("window", 5000)
    assert ctx.timer_ops == [
        (timer_key(key_tag("u"), "window"), encode_timer(5000, TimeDomain.EVENT))
    ]
    assert decode_timer(ctx.timer_ops[0][1]) == (5000, TimeDomain.EVENT)


def test_set_timer_in_the_wall_domain(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    ctx.set_timer("t", 1700000000000, domain="wall")
    ctx.set_timer("e", 7, domain="event")
    assert ctx.timer_ops == [
        (timer_key(key_tag("u"), "t"), encode_timer(1700000000000, TimeDomain.WALL)),
        (timer_key(key_tag("u"), "e"), encode_timer(7, TimeDomain.EVENT)),
    ]


def test_set_timer_truncates_a_float_time_to_int(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    ctx.set_timer("t", 99.9)
    assert decode_timer(ctx.timer_ops[0][1]) == (99, TimeDomain.EVENT)


def test_set_timer_accepts_negative_times(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    ctx.set_timer("t", -5)
    assert decode_timer(ctx.timer_ops[0][1]) == (-5, TimeDomain.EVENT)


def test_delete_timer_appends_a_tombstone(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    ctx.delete_timer("window")
    assert ctx.timer_ops == [(timer_key(key_tag("u"), "window"), None)]


def test_timer_ops_keep_call_order_including_repeats(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    ctx.set_timer("t", 1)
    ctx.set_timer("t", 2)
    ctx.delete_timer("t")
    ctx.set_timer("t", 3, domain="wall")
    tk = timer_key(key_tag("u"), "t")
    assert ctx.timer_ops == [
        (tk, encode_timer(1, TimeDomain.EVENT)),
        (tk, encode_timer(2, TimeDomain.EVENT)),
        (tk, None),
        (tk, encode_timer(3, TimeDomain.WALL)),
    ]


@pytest.mark.parametrize("domain", ["processing", "EVENT", "", None, b"e"])
def test_set_timer_with_a_bad_domain_raises_and_records_nothing(ctx, domain):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    with pytest.raises(ValueError, match=r"timer domain must be 'event' or 'wall'"):
        ctx.set_timer("t", 1, domain=domain)
    assert ctx.timer_ops == []


def test_set_timer_with_a_non_str_tag_raises_type_error(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    with pytest.raises(TypeError, match=r"timer tag must be str, got int"):
        ctx.set_timer(3, 1)
    assert ctx.timer_ops == []


@pytest.mark.parametrize("tag", [b"t", 3])
def test_delete_timer_with_a_non_str_tag_raises_type_error(ctx, tag):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    with pytest.raises(TypeError, match=r"timer tag must be str"):
        ctx.delete_timer(tag)


def test_timer_key_names_the_current_key_and_its_type(ctx):
    ctx.begin(b"k", key_tag(b"k"), KeyState({}), PARENT, 0)
    ctx.set_timer("t", 1)
    [(bytes_tkey, _)] = ctx.timer_ops
    ctx.begin("k", key_tag("k"), KeyState({}), PARENT, 0)
    ctx.set_timer("t", 1)
    [(str_tkey, _)] = ctx.timer_ops
    assert split_timer_key(bytes_tkey) == (key_tag(b"k"), "t")
    assert split_timer_key(str_tkey) == (key_tag("k"), "t")
    assert bytes_tkey != str_tkey


def test_begin_resets_timer_ops(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    ctx.set_timer("t", 1)
    ops = ctx.timer_ops
    ctx.begin("v", key_tag("v"), KeyState({}), PARENT, 0)
    assert ctx.timer_ops == []
    assert ops == [
        (timer_key(key_tag("u"), "t"), encode_timer(1, TimeDomain.EVENT))
    ]  # the old list is not cleared


def test_timers_do_not_consume_output_ids_or_produce_outputs(ctx):
    ctx.begin("u", key_tag("u"), KeyState({}), PARENT, 0)
    ctx.set_timer("t", 1)
    ctx.delete_timer("t")
    assert ctx.outputs == []
    ctx.produce("raw", b"k", b"v")
    assert ctx.outputs[0][4] == derive(PARENT, 0)


def test_low_watermark_starts_at_the_minimum(ctx):
    assert ctx.low_watermark == MIN_WATERMARK


def test_a_re_keyed_record_lands_where_the_computations_direct_input_puts_its_key():
    from kwheel.kafka.partitioner import partition_for
    from kwheel.serde import JSON

    p = Pipeline("p")
    p.stream("a", partitions=5, key="json", value="json", source=True)  # JSON keys: quoted bytes
    p.stream("b", partitions=3, value="json")  # written by the pipeline: its producers re-key
    p.computation("w", Nop, inputs=["a"], outputs=["b"])
    p.computation("c", Nop, inputs=["a", Input("b", key_by=lambda r: r.value["k"])])
    [_, (topic, key, _, _, _, partition)] = StreamWriter(p.validate(), ["b"]).encode(
        "b", "x", {"k": "key-7"}, 1, PARENT
    )
    assert topic == "p.c.b.repartition" and key == key_tag("key-7")
    assert partition == partition_for(JSON.encode("key-7"), 5)


def test_a_re_keyed_source_record_goes_through_the_stage_to_the_same_partition():
    from kwheel.kafka.partitioner import partition_for
    from kwheel.serde import JSON

    p = Pipeline("p")
    p.stream("a", partitions=5, key="json", value="json", source=True)
    p.stream("b", partitions=3, value="json", source=True)  # outside producers: kwheel re-keys it
    p.computation("c", Nop, inputs=["a", Input("b", key_by=lambda r: r.value["k"])])
    p.validate()
    assert [r.topic for r in p.routes("b")] == ["p.b"]
    [(topic, key, _, _, _, partition)] = StreamWriter(p, ["c.rekey.b"]).encode(
        "c.rekey.b", "key-7", {"k": "key-7"}, 1, PARENT
    )
    assert topic == "p.c.b.repartition" and key == key_tag("key-7")
    assert partition == partition_for(JSON.encode("key-7"), 5)
