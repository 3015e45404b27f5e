"""Store/changelog key layout: key tags, u64, id batches, state encoding."""

from __future__ import annotations

import pytest

from kwheel.record import TimeDomain
from kwheel.state import layout


@pytest.mark.parametrize("key", ["", "user-1", "ünï", "a\x00b", b"", b"user-1", b"\x00\xff\x80"])
def test_key_tag_round_trip_keeps_value_and_type(key):
    back = layout.key_from_tag(layout.key_tag(key))
    assert back == key
    assert type(back) is type(key)


def test_str_and_bytes_keys_with_same_content_get_different_tags():
    assert layout.key_tag("abc") != layout.key_tag(b"abc")
    assert layout.key_tag("abc") == b"uabc"
    assert layout.key_tag(b"abc") == b"babc"


def test_key_tag_of_bytearray_is_a_bytes_tag():
    assert layout.key_tag(bytearray(b"xy")) == b"bxy"


@pytest.mark.parametrize("key", [3, 0, 2**40, -1, 1.5, None, ["a"], ("a",), {"a": 1}])
def test_key_tag_rejects_keys_that_are_not_str_or_bytes(key):
    # an int key used to become n zero bytes (3 collided with b"\x00\x00\x00")
    with pytest.raises(TypeError, match=r"keys must be str or bytes, got " + type(key).__name__):
        layout.key_tag(key)


def test_key_tag_of_memoryview_is_a_bytes_tag():
    assert layout.key_tag(memoryview(b"xy")) == b"bxy"


def test_state_key_is_prefixed():
    assert layout.state_key("k") == layout.STATE + b"uk"


@pytest.mark.parametrize("n", [0, 1, 255, 2**32, 2**63 - 1, -1])
def test_u64_round_trip(n):
    data = layout.encode_u64(n)
    assert len(data) == 8
    assert layout.decode_u64(data) == n


def test_u64_is_big_endian_so_batch_keys_sort_numerically():
    keys = [layout.id_batch_key(n) for n in (0, 1, 2, 255, 256, 70000)]
    assert sorted(keys) == keys
    assert layout.id_batch_key(1) == layout.ID_BATCH + b"\x00" * 7 + b"\x01"


def test_state_round_trip():
    state = {"count": 3, "names": ["a", "b"], "raw": b"\x00"}
    assert layout.decode_state(layout.encode_state(state)) == state


def test_empty_id_batch_round_trip():
    assert layout.encode_id_batch({}) == b""
    assert layout.decode_id_batch(b"") == []


def test_id_batch_round_trip_keeps_order_and_timestamps():
    ids = {b"\x01" * 16: 1700000000000, b"short": 0, b"": 5, b"x" * 300: -1, b"\x00" * 16: 2**62}
    assert layout.decode_id_batch(layout.encode_id_batch(ids)) == list(ids.items())


def test_id_batch_encoding_is_length_prefixed():
    assert layout.encode_id_batch({b"ab": 1}) == b"\x00\x02" + b"\x00" * 7 + b"\x01" + b"ab"


def test_key_prefixes_are_distinct():
    prefixes = {
        layout.STATE,
        layout.ID_BATCH,
        layout.SEEN,
        layout.META,
        layout.TIMER,
        layout.TIMER_INDEX,
        layout.WATERMARK,
    }
    assert len(prefixes) == 7
    assert all(len(p) == 1 for p in prefixes)
    assert layout.APPLIED_OFFSET.startswith(layout.META)
    assert layout.NEXT_BATCH.startswith(layout.META)


# ---- timers ---------------------------------------------------------------------------------

KEYTAGS = [
    layout.key_tag(k) for k in ("", "user-1", "ünï", "a\x00b", b"", b"user-1", b"\x00\xff\x80")
]
TAGS = ["", "t", "window-end", "ünï ☃ 🕐", "a\x00b", "x" * 300]


@pytest.mark.parametrize("keytag", KEYTAGS)
@pytest.mark.parametrize("tag", TAGS)
def test_timer_key_round_trip(keytag, tag):
    tkey = layout.timer_key(keytag, tag)
    assert tkey.startswith(layout.TIMER)
    back_tag, back = layout.split_timer_key(tkey)
    assert (back_tag, back) == (keytag, tag)
    assert type(back) is str
    assert layout.key_from_tag(back_tag) == layout.key_from_tag(keytag)


def test_timer_key_is_length_prefixed_so_key_and_tag_do_not_run_together():
    # keytag "ua" + tag "b" must not equal keytag "uab" + tag ""
    assert layout.timer_key(b"ua", "b") != layout.timer_key(b"uab", "")
    assert layout.timer_key(b"ua", "b") == b"t\x00\x02uab"


def test_timer_keys_of_str_and_bytes_keys_differ():
    assert layout.timer_key(layout.key_tag("k"), "t") != layout.timer_key(layout.key_tag(b"k"), "t")


@pytest.mark.parametrize("ts", [0, 1, -1, 1700000000000, -(2**63), 2**63 - 1])
@pytest.mark.parametrize("domain", list(TimeDomain))
def test_timer_value_round_trip(ts, domain):
    value = layout.encode_timer(ts, domain)
    assert len(value) == 9
    assert layout.decode_timer(value) == (ts, domain)


TIMES = sorted(
    [
        -(2**63),
        -(2**63) + 1,
        -(2**40),
        -1700000000000,
        -256,
        -2,
        -1,
        0,
        1,
        2,
        255,
        256,
        2**40,
        1700000000000,
        2**63 - 2,
        2**63 - 1,
    ]
)


@pytest.mark.parametrize("domain", list(TimeDomain))
def test_timer_index_keys_sort_by_time_as_bytes_across_zero(domain):
    tkey = layout.timer_key(layout.key_tag("k"), "t")
    keys = [layout.timer_index_key(tkey, ts, domain) for ts in TIMES]
    assert sorted(keys) == keys
    assert len(set(keys)) == len(keys)


def test_timer_index_orders_by_time_before_key():
    early_z = layout.timer_index_key(
        layout.timer_key(layout.key_tag("zzz"), "z"), -5, TimeDomain.EVENT
    )
    late_a = layout.timer_index_key(layout.timer_key(layout.key_tag("a"), "a"), 3, TimeDomain.EVENT)
    assert early_z < late_a


def test_timer_index_keys_of_a_domain_share_a_two_byte_prefix():
    tkey = layout.timer_key(layout.key_tag("k"), "t")
    for domain in TimeDomain:
        for ts in TIMES:
            prefix = layout.timer_index_prefix(domain)
            assert len(prefix) == 2 and prefix[:1] == layout.TIMER_INDEX
            assert layout.timer_index_key(tkey, ts, domain)[:2] == prefix
    assert (
        layout.timer_index_key(tkey, 0, TimeDomain.EVENT)[:2]
        != layout.timer_index_key(tkey, 0, TimeDomain.WALL)[:2]
    )


@pytest.mark.parametrize("keytag", KEYTAGS)
@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("ts", [-(2**63), -1, 0, 1, 1700000000000, 2**63 - 1])
def test_split_timer_index_key_round_trip(keytag, tag, ts):
    tkey = layout.timer_key(keytag, tag)
    assert layout.split_timer_index_key(layout.timer_index_key(tkey, ts, TimeDomain.WALL)) == (
        ts,
        tkey,
    )
