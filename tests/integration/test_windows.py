"""WindowedAggregation on a real broker: tumbling, sliding and session windows against an
offline reference, and allowed lateness (late firing, then too late)."""

import json
import random
import time
from collections import defaultdict

from kwheel.config import WorkerConfig
from kwheel.injector import BoundedDisorder, Injector
from kwheel.testing.processes import wait_until
from kwheel.testing.readers import read_committed
from kwheel.watermarks import MAX_WATERMARK
from tests.helpers import latest_watermark, setup_topics
from tests.pipelines import windowed

DISORDER_MS = 300
SESSION_GAP_MS = windowed.SessionAgg.windows.gap_ms


def disordered(events, rng):
    """Send order: timestamps out of order by less than DISORDER_MS (so none is late)."""
    return sorted(events, key=lambda e: e[1] + rng.uniform(0, DISORDER_MS - 1))


def inject_all(kafka, p, events):
    inj = Injector(
        p, "source", ["events"], WorkerConfig(bootstrap_servers=kafka.bootstrap), instance="i0"
    )
    policy = BoundedDisorder(DISORDER_MS)
    for key, ts, seq in events:
        inj.send("events", key, {"seq": seq}, timestamp=ts)
        inj.advance(policy.observe(ts))
    inj.close(final=True)


def results(kafka, name):
    return [
        (r.timestamp, json.loads(r.value))
        for r in read_committed(kafka.bootstrap, f"{name}.results")
    ]


def run(kafka, name, workers, make, events):
    """Run the pipeline over ``events`` to the end of input; return the emitted results."""
    p = make(name)
    setup_topics(kafka.bootstrap, p)
    w = workers(f"tests.pipelines.windowed:{make.__name__}", name, slot="s0")
    inject_all(kafka, p, events)
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:agg/") == MAX_WATERMARK,
        30,
        "end of input",
    )
    assert w.stop() == 0
    assert w.task_counters("agg")["late"] == 0
    return results(kafka, name)


def check(out, reference, fires_at):
    """Every window emitted exactly once, after it was complete, with the reference's values."""
    seen = defaultdict(int)
    for ts, r in out:
        seen[(r["key"], r["start"], r["end"])] += 1
        assert r["watermark"] >= fires_at(r) and ts == fires_at(r), r
    dupes = [k for k, n in seen.items() if n > 1]
    assert not dupes, f"windows emitted more than once: {dupes[:5]}"
    got = {(r["key"], r["start"], r["end"]): (r["count"], r["sum"]) for _, r in out}
    assert got == reference


def add(ref, window, seq):
    count, total = ref.get(window, (0, 0))
    ref[window] = (count + 1, total + seq)


def base_ms():
    return (int(time.time() * 1000) // 1000 - 300) * 1000


def test_tumbling_windows_match_the_offline_reference(kafka, name, workers):
    rng = random.Random(101)
    start = base_ms()
    events = [(f"k{i % 13}", start + i * 7 + rng.randrange(7), i) for i in range(4000)]
    ref = {}
    for key, ts, seq in events:
        s = ts // 1000 * 1000
        add(ref, (key, s, s + 1000), seq)
    out = run(kafka, name, workers, windowed.tumbling, disordered(events, rng))
    check(out, ref, lambda r: r["end"])


def test_sliding_windows_match_the_offline_reference(kafka, name, workers):
    rng = random.Random(202)
    start = base_ms()
    events = [(f"k{i % 11}", start + i * 5 + rng.randrange(5), i) for i in range(3000)]
    ref = {}
    for key, ts, seq in events:
        for s in range(ts // 250 * 250 - 750, ts + 1, 250):  # size 1000, slide 250: 4 windows
            assert s <= ts < s + 1000
            add(ref, (key, s, s + 1000), seq)
    out = run(kafka, name, workers, windowed.sliding, disordered(events, rng))
    check(out, ref, lambda r: r["end"])


def sessions_reference(events, gap):
    by_key = defaultdict(list)
    for key, ts, seq in events:
        by_key[key].append((ts, seq))
    ref = {}
    for key, items in by_key.items():
        items.sort()
        cur = None  # [start, end, count, sum]
        for ts, seq in items:
            if cur is not None and ts <= cur[1]:  # within the gap (or exactly at it): same session
                cur[1] = max(cur[1], ts + gap)
                cur[2] += 1
                cur[3] += seq
            else:
                if cur is not None:
                    ref[(key, cur[0], cur[1])] = (cur[2], cur[3])
                cur = [ts, ts + gap, 1, seq]
        ref[(key, cur[0], cur[1])] = (cur[2], cur[3])
    return ref


def test_session_windows_match_the_offline_reference(kafka, name, workers):
    rng = random.Random(303)
    start = base_ms()
    # one record every 10 ms to a random one of 7 keys, and a 1 s pause every 300 records:
    # a key's gaps are mostly under the 200 ms session gap, sometimes over, sometimes exactly it
    events = [(f"k{rng.randrange(7)}", start + i * 10 + (i // 300) * 1000, i) for i in range(3000)]
    ref = sessions_reference(events, SESSION_GAP_MS)
    gaps = defaultdict(list)
    for key, ts, _ in sorted(events, key=lambda e: (e[0], e[1])):
        gaps[key].append(ts)
    exact = sum(1 for ts in gaps.values() for a, b in zip(ts, ts[1:]) if b - a == SESSION_GAP_MS)
    assert exact > 0 and len(ref) > 70  # the input exercises adjacency and many sessions
    out = run(kafka, name, workers, windowed.sessions, disordered(events, rng))
    check(out, ref, lambda r: r["end"] + 1)


def test_allowed_lateness_re_emits_late_records_and_drops_later_ones(kafka, name, workers):
    p = windowed.lateness(name)
    setup_topics(kafka.bootstrap, p)
    w = workers("tests.pipelines.windowed:lateness", name, slot="s0")
    t0 = base_ms()
    inj = Injector(
        p, "source", ["events"], WorkerConfig(bootstrap_servers=kafka.bootstrap), instance="i0"
    )

    def window_counts():
        return [r["count"] for _, r in results(kafka, name) if (r["key"], r["start"]) == ("a", t0)]

    for i in range(5):
        inj.send("events", "a", {"seq": i}, timestamp=t0 + 100 * (i + 1))
    inj.advance(t0 + 1500)  # past the window's end: it fires with 5
    inj.publish()
    wait_until(lambda: window_counts() == [5], 15, "the on-time firing")

    inj.send(
        "events", "a", {"seq": 5}, timestamp=t0 + 600
    )  # late, within lateness (until t0 + 3000)
    inj.publish()
    wait_until(lambda: window_counts() == [5, 6], 15, "the late firing")

    inj.advance(t0 + 1000 + windowed.LATENESS_MS + 2000)  # past the end of lateness: state dropped
    inj.publish()
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:agg/") >= t0 + 5000,
        15,
        "the end of lateness",
    )
    inj.send("events", "a", {"seq": 6}, timestamp=t0 + 700)  # too late
    inj.close(final=True)
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:agg/") == MAX_WATERMARK,
        15,
        "end of input",
    )
    assert w.stop() == 0

    out = results(kafka, name)
    assert [(ts, r["start"], r["end"], r["count"], r["sum"]) for ts, r in out] == [
        (t0 + 1000, t0, t0 + 1000, 5, 10),
        (t0 + 1000, t0, t0 + 1000, 6, 15),
    ]
    assert out[1][1]["watermark"] >= t0 + 1000  # a late firing: after the window was complete
    dropped = [json.loads(r.value) for r in read_committed(kafka.bootstrap, f"{name}.dropped")]
    assert [(d["seq"], d["timestamp"]) for d in dropped] == [(6, t0 + 700)]
    assert dropped[0]["watermark"] >= t0 + 3000
    assert w.task_counters("agg")["late"] == 2  # both records behind the watermark were flagged
