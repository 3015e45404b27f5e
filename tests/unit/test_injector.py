"""BoundedDisorder, the injector watermark policy (no broker needed)."""

from __future__ import annotations

import pytest

from kwheel.injector import BoundedDisorder
from kwheel.watermarks import MIN_WATERMARK


def test_no_watermark_before_any_record():
    b = BoundedDisorder(100)
    assert b.watermark == MIN_WATERMARK
    assert b.max_seen == MIN_WATERMARK


def test_watermark_trails_the_largest_timestamp_by_the_bound():
    b = BoundedDisorder(100)
    assert b.observe(1000) == 900
    assert b.watermark == 900
    assert b.observe(2500) == 2400


def test_out_of_order_records_within_the_bound_do_not_move_it_back():
    b = BoundedDisorder(100)
    b.observe(1000)
    assert b.observe(950) == 900
    assert b.observe(10) == 900  # late: still no regression
    assert b.max_seen == 1000


def test_equal_timestamp_keeps_the_watermark():
    b = BoundedDisorder(100)
    b.observe(1000)
    assert b.observe(1000) == 900


def test_zero_bound_means_in_order():
    b = BoundedDisorder(0)
    assert b.observe(42) == 42
    assert b.observe(41) == 42


def test_negative_and_zero_timestamps():
    b = BoundedDisorder(100)
    assert b.observe(-500) == -600
    assert b.observe(0) == -100
    assert b.observe(-10_000) == -100


def test_first_timestamp_below_the_bound_gives_a_negative_watermark():
    assert BoundedDisorder(100).observe(50) == -50


@pytest.mark.parametrize(
    "timestamps",
    [
        [5, 3, 9, 1, 9, 12, 0, 100, 50],
        [1700000000000, 1699999999000, 1700000005000, 1700000004999],
        list(range(100, 0, -1)),
    ],
)
def test_watermark_is_monotonic_and_never_above_max_seen_minus_bound(timestamps):
    b = BoundedDisorder(7)
    last = MIN_WATERMARK
    for ts in timestamps:
        w = b.observe(ts)
        assert w >= last
        assert w == max(timestamps[: timestamps.index(ts) + 1]) - 7
        last = w


def test_negative_bound_is_rejected():
    with pytest.raises((ValueError, TypeError)):
        BoundedDisorder(-100)
