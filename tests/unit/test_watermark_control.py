"""The Avro watermark control record and producer ids."""

from __future__ import annotations

import pytest

from kwheel.watermarks import MAX_WATERMARK, MIN_WATERMARK
from kwheel.watermarks.control import (
    INJECTOR,
    TASK,
    Control,
    injector_producer_id,
    task_producer_id,
)


def round_trip(c: Control) -> Control:
    return Control.decode(c.encode())


def test_task_control_round_trip():
    c = Control(
        producer="task:counter/3",
        kind=TASK,
        streams=["counts", "dead"],
        watermark=1700000000000,
        positions=[
            ("p.counts", 0, 10),
            ("p.counts", 1, 0),
            ("p.by_country.counts.repartition", 7, 2**40),
        ],
        wall_time=1700000001234,
        input_watermark=1699999999000,
        stats={"processed": 5, "pending_timers": 0, "late": 2**40},
    )
    back = round_trip(c)
    assert back == c
    assert back.final is False
    assert all(type(p) is tuple for p in back.positions)


def test_injector_control_round_trip_with_final():
    c = Control(
        "injector:load/host-12",
        INJECTOR,
        ["events"],
        MAX_WATERMARK,
        [("p.events", 0, 5)],
        1,
        final=True,
    )
    back = round_trip(c)
    assert back == c
    assert back.final is True
    assert back.kind == INJECTOR


def test_defaults_round_trip():
    c = Control("task:c/0", TASK, [], MIN_WATERMARK, [], 0)
    back = round_trip(c)
    assert back == c
    assert back.input_watermark == 0
    assert back.final is False
    assert back.stats == {}
    assert back.positions == []
    assert back.streams == []


@pytest.mark.parametrize("w", [MIN_WATERMARK, -1, 0, 1, 1700000000000, MAX_WATERMARK])
def test_watermark_extremes_round_trip(w):
    c = Control("task:c/0", TASK, ["s"], w, [("t", 0, 0)], -5, input_watermark=w, stats={"n": w})
    assert round_trip(c) == c


def test_unicode_names_round_trip():
    c = Control(
        "injector:ünï/☃", INJECTOR, ["straße"], 0, [("p.straße", 2, 1)], 0, stats={"gesendet·ü": 1}
    )
    assert round_trip(c) == c


def test_stream_and_position_order_is_kept():
    positions = [("b", 1, 1), ("a", 0, 2), ("b", 0, 3)]
    c = Control("task:c/0", TASK, ["z", "a", "m"], 0, positions, 0)
    back = round_trip(c)
    assert back.streams == ["z", "a", "m"]
    assert back.positions == positions


def test_encoding_is_compact_binary():
    data = Control("task:c/0", TASK, ["s"], 0, [], 0).encode()
    assert isinstance(data, bytes)
    assert len(data) < 40


def test_unknown_kind_cannot_be_encoded():
    with pytest.raises(ValueError):
        Control("x", "OTHER", [], 0, [], 0).encode()


def test_producer_ids():
    assert task_producer_id("counter", 3) == "task:counter/3"
    assert injector_producer_id("load", "host-1") == "injector:load/host-1"
    assert task_producer_id("a", 0) != injector_producer_id("a", "0")


def test_a_control_written_before_announcements_existed_still_decodes():
    import io

    import fastavro

    from kwheel.watermarks.control import _SCHEMA_V1

    buf = io.BytesIO()
    fastavro.schemaless_writer(
        buf,
        _SCHEMA_V1,
        {
            "producer": "task:c/0",
            "kind": "TASK",
            "streams": ["s"],
            "watermark": 5,
            "input_watermark": 4,
            "positions": [{"topic": "t", "partition": 0, "offset": 9}],
            "final": False,
            "wall_time": 1,
            "stats": {},
            "incarnation": 7,
        },
    )
    c = Control.decode(buf.getvalue())
    assert (c.producer, c.watermark, c.positions, c.incarnation) == (
        "task:c/0",
        5,
        [("t", 0, 9)],
        7,
    )
    assert not c.announce and c.owner == ""


def test_a_control_written_before_resets_and_retirements_still_decodes():
    import io

    import fastavro

    from kwheel.watermarks.control import _SCHEMA_V2

    buf = io.BytesIO()
    fastavro.schemaless_writer(
        buf,
        _SCHEMA_V2,
        {
            "producer": "task:c/0",
            "kind": "TASK",
            "streams": ["s"],
            "watermark": 5,
            "input_watermark": 4,
            "positions": [],
            "final": False,
            "wall_time": 1,
            "stats": {},
            "incarnation": 7,
            "announce": True,
            "owner": "tok",
        },
    )
    c = Control.decode(buf.getvalue())
    assert (c.announce, c.owner, c.incarnation) == (True, "tok", 7)
    assert not c.reset and not c.retired


def test_resets_and_retirements_round_trip_with_keys_that_compaction_keeps_apart():
    r = Control("task:c/0", TASK, [], MIN_WATERMARK, [], 1, incarnation=3, owner="x", reset=True)
    assert Control.decode(r.encode()) == r
    assert r.key == b"task:c/0"  # replaces the task's old controls on compaction
    inj = injector_producer_id("load", "1")
    g = Control(inj, INJECTOR, ["s"], MAX_WATERMARK, [("t", 0, 9)], 1, final=True, retired=True)
    assert Control.decode(g.encode()) == g
    assert g.key == b"retired:" + inj.encode()  # never replaced by the instance's own
