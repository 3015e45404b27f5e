"""Low watermarks and timers on a real broker: ordering, windows, lateness, crashes, idleness."""

import json
import random
import time
from collections import Counter

from kwheel.config import WorkerConfig
from kwheel.injector import BoundedDisorder, Injector
from kwheel.testing.processes import wait_until
from kwheel.testing.readers import read_committed
from kwheel.watermarks import MAX_WATERMARK, MIN_WATERMARK
from tests.helpers import (
    latest_watermark,
    read_controls,
    records_behind_a_usable_watermark,
    setup_topics,
)
from tests.pipelines.windows import three_stage, wall_timers

REF = "tests.pipelines.windows:three_stage"
DISORDER_MS = 300


def disordered_events(n, keys, start_ms, step_ms, rng):
    """Events whose timestamps arrive out of order by less than DISORDER_MS."""
    evs = [(f"k{i % keys}", start_ms + i * step_ms, i) for i in range(n)]
    evs.sort(key=lambda e: e[1] + rng.uniform(0, DISORDER_MS - 1))
    return evs


def inject_disordered(kafka, p, events, injector=None, close=True):
    inj = injector or Injector(
        p, "source", ["events"], WorkerConfig(bootstrap_servers=kafka.bootstrap), instance="i0"
    )
    policy = BoundedDisorder(DISORDER_MS)
    if injector is not None:
        policy.max_seen = getattr(injector, "_test_max_seen", MIN_WATERMARK)
    for key, ts, seq in events:
        inj.send("events", key, {"seq": seq}, timestamp=ts)
        inj.advance(policy.observe(ts))
    inj._test_max_seen = policy.max_seen
    if close:
        inj.close(final=True)
    else:
        inj.publish()
    return inj


def send_steady(inj, seqs, keys, t0, watermark):
    """Events seq at t0 + 10 ms * seq over ``keys`` keys, then the injector's watermark."""
    for i in seqs:
        inj.send("events", f"k{i % keys}", {"seq": i}, timestamp=t0 + i * 10)
    inj.advance(watermark)
    inj.publish()


def window_reference(events):
    return Counter((key, ts // 1000 * 1000) for key, ts, _ in events)


def windows_emitted(kafka, name):
    return [json.loads(r.value) for r in read_committed(kafka.bootstrap, f"{name}.windows")]


def check_monotonic(controls):
    last = {}
    for c in controls:
        assert c.watermark >= last.get(c.producer, MIN_WATERMARK), (
            f"{c.producer} went back to {c.watermark}"
        )
        last[c.producer] = c.watermark


def check_windows(kafka, name, events):
    out = windows_emitted(kafka, name)
    got = Counter()
    for w in out:
        got[(w["key"], w["start"])] += 1
        # emitted only once the watermark passed the window's end
        assert w["watermark"] >= w["start"] + 1000
    dupes = [k for k, n in got.items() if n > 1]
    assert not dupes, f"windows emitted more than once: {dupes[:5]}"
    ref = window_reference(events)
    assert {(w["key"], w["start"]): w["count"] for w in out} == dict(ref)


def test_watermarks_are_monotonic_and_never_pass_upstream(kafka, name, workers):
    p = three_stage(name)
    setup_topics(kafka.bootstrap, p)
    w = workers(REF, name, slot="s0")
    rng = random.Random(11)
    start = (int(time.time() * 1000) // 1000 - 120) * 1000
    events = disordered_events(3000, 23, start, 20, rng)
    inj = None
    for i in range(5):  # in steps, each followed by the watermark reaching the last stage
        inj = inject_disordered(
            kafka, p, events[i * 600 : (i + 1) * 600], injector=inj, close=(i == 4)
        )
        if i < 4:
            wm = inj.watermark
            wait_until(
                lambda wm=wm: latest_watermark(kafka.bootstrap, name, "task:counter/") >= wm,
                30,
                f"the last stage to reach {wm}",
            )
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:counter/") == MAX_WATERMARK,
        60,
        "the last stage to see the end of input",
    )
    assert w.stop() == 0
    controls = read_controls(kafka.bootstrap, name)
    check_monotonic(controls)
    latest = {}
    taggers = [f"task:tagger/{i}" for i in range(4)]
    counters = [f"task:counter/{i}" for i in range(4)]
    checked = Counter()
    for c in controls:
        latest[c.producer] = MAX_WATERMARK if c.final else c.watermark
        injector_w = latest.get("injector:source/i0", MIN_WATERMARK)
        if c.producer in taggers:
            assert c.watermark <= injector_w, (
                f"{c.producer} at {c.watermark} passed the injector's {injector_w}"
            )
            checked["tagger"] += 1
        if c.producer in counters:
            a = min(latest.get(t, MIN_WATERMARK) for t in taggers)
            assert c.watermark <= a, f"{c.producer} at {c.watermark} passed stage A's {a}"
            checked["counter"] += 1
    assert checked["tagger"] > 4 and checked["counter"] > 4
    # the watermark really moved through event time, not only to the end
    moving = {c.watermark for c in controls if c.producer in counters} - {
        MIN_WATERMARK,
        MAX_WATERMARK,
    }
    assert len(moving) > 3
    # and, whatever speed a reader had, none could use a watermark past a record not yet read
    for stage in ("tagger", "counter"):
        assert records_behind_a_usable_watermark(kafka.bootstrap, p, stage) == []


def test_event_time_windows_fire_once_with_exact_counts(kafka, name, workers):
    p = three_stage(name)
    setup_topics(kafka.bootstrap, p)
    w = workers(REF, name, slot="s0")
    rng = random.Random(5)
    start = (int(time.time() * 1000) // 1000 - 300) * 1000
    events = disordered_events(6000, 17, start, 7, rng)
    inject_disordered(kafka, p, events)
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:counter/") == MAX_WATERMARK,
        60,
        "end of input",
    )
    assert w.stop() == 0
    check_windows(kafka, name, events)
    mid = [json.loads(r.value) for r in read_committed(kafka.bootstrap, f"{name}.mid")]
    assert len(mid) == len(events) and not any(m["late"] for m in mid)
    assert w.task_counters()["late"] == 0


def test_a_record_behind_the_watermark_is_flagged_late_and_counted(kafka, name, workers):
    p = three_stage(name)
    setup_topics(kafka.bootstrap, p)
    w = workers(REF, name, slot="s0")
    cfg = WorkerConfig(bootstrap_servers=kafka.bootstrap)
    t0 = (int(time.time() * 1000) // 1000 - 60) * 1000
    inj = Injector(p, "source", ["events"], cfg, instance="i0")
    for i in range(20):
        inj.send("events", f"k{i % 3}", {"seq": i}, timestamp=t0 + i * 100)
    inj.advance(t0 + 10_000)
    inj.publish()
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:tagger/") >= t0 + 10_000,
        30,
        "stage A's watermark to pass the injected records",
    )
    inj.send("events", "k1", {"seq": 999}, timestamp=t0 + 500)  # behind the watermark
    inj.close(final=True)
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:counter/") == MAX_WATERMARK,
        30,
        "end of input",
    )
    assert w.stop() == 0
    mid = [json.loads(r.value) for r in read_committed(kafka.bootstrap, f"{name}.mid")]
    assert len(mid) == 21
    assert [m["seq"] for m in mid if m["late"]] == [999]
    assert w.task_counters("tagger")["late"] == 1


def test_timers_fire_exactly_once_across_sigkills(kafka, name, workers, tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    rng = random.Random(seed)
    p = three_stage(name)
    setup_topics(kafka.bootstrap, p)
    start = (int(time.time() * 1000) // 1000 - 600) * 1000
    events = disordered_events(16000, 31, start, 20, rng)
    chunks = [events[i * 4000 : (i + 1) * 4000] for i in range(4)]
    args = ["--batch-size", "300"]
    state = tmp_path / "state"
    w = workers(REF, name, slot="s0", state_dir=state, args=args)
    inj = None
    for r, chunk in enumerate(chunks):
        inj = inject_disordered(kafka, p, chunk, injector=inj, close=(r == len(chunks) - 1))
        if r == len(chunks) - 1:
            break
        # kill once the counter's timers are firing on this chunk
        target = chunk[len(chunk) // 4][1]
        wait_until(
            lambda target=target: (
                latest_watermark(kafka.bootstrap, name, "task:counter/") >= target
            ),
            60,
            "windows of this chunk to fire",
        )
        w.kill()
        if rng.random() < 0.5:
            state = (
                tmp_path / f"state-{r}"
            )  # restarted on another machine: restore from the changelog
        w = workers(REF, name, slot="s0", state_dir=state, args=args, tag=f"s0-{r}")
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:counter/") == MAX_WATERMARK,
        90,
        "end of input",
    )
    assert w.stop() == 0
    check_windows(kafka, name, events)
    check_monotonic(read_controls(kafka.bootstrap, name))


def test_an_empty_input_partition_does_not_stall_downstream(kafka, name, workers):
    p = three_stage(name)
    setup_topics(kafka.bootstrap, p)
    w = workers(REF, name, slot="s0")
    t0 = (int(time.time() * 1000) // 1000 - 60) * 1000
    inj = Injector(
        p, "source", ["events"], WorkerConfig(bootstrap_servers=kafka.bootstrap), instance="i0"
    )
    for i in range(200):  # one key: one of the four partitions gets everything
        inj.send("events", "only-key", {"seq": i}, timestamp=t0 + i * 10)
    inj.advance(t0 + 30_000)
    inj.publish()
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:counter/") >= t0 + 30_000,
        30,
        "every counter task to reach the injector's watermark",
    )
    windows = windows_emitted(kafka, name)
    assert sum(x["count"] for x in windows) == 200
    inj.close(final=True)
    assert w.stop() == 0


def test_wall_time_timers_fire_soon_after_their_time(kafka, name, workers):
    p = wall_timers(name)
    setup_topics(kafka.bootstrap, p)
    w = workers("tests.pipelines.windows:wall_timers", name, slot="s0")
    inj = Injector(
        p, "source", ["events"], WorkerConfig(bootstrap_servers=kafka.bootstrap), instance="i0"
    )
    for i in range(10):
        inj.send("events", f"k{i}", {"seq": i})
    inj.publish()
    wait_until(
        lambda: len(read_committed(kafka.bootstrap, f"{name}.pings")) >= 10, 30, "every ping"
    )
    assert w.stop() == 0
    pings = [json.loads(r.value) for r in read_committed(kafka.bootstrap, f"{name}.pings")]
    assert sorted(x["key"] for x in pings) == [f"k{i}" for i in range(10)]
    for x in pings:
        assert x["domain"] == "wall"
        assert 0 <= x["fired_at"] - x["due"] <= 2000, x


def _status(kafka, name, *extra):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT), KWHEEL_TEST_PIPELINE=name)
    r = subprocess.run(
        [sys.executable, "-m", "kwheel", "status", REF, "-b", kafka.bootstrap, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_status_shows_lag_watermarks_and_counters(kafka, name, workers):
    p = three_stage(name)
    setup_topics(kafka.bootstrap, p)
    t0 = (int(time.time() * 1000) // 1000 - 60) * 1000
    inj = Injector(
        p, "source", ["events"], WorkerConfig(bootstrap_servers=kafka.bootstrap), instance="i0"
    )
    send_steady(inj, range(500), 9, t0, t0 + 5000)
    before = json.loads(_status(kafka, name, "--json"))
    tagger = next(c for c in before["computations"] if c["name"] == "tagger")
    assert tagger["lag"] == 500 and tagger["low_watermark"] is None and tagger["processed"] == 0
    assert before["injectors"][0]["low_watermark"] == t0 + 5000
    w = workers(REF, name, slot="s0")
    inj.close(final=True)
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:counter/") == MAX_WATERMARK,
        30,
        "end of input",
    )
    after = json.loads(_status(kafka, name, "--json"))
    by_name = {c["name"]: c for c in after["computations"]}
    assert by_name["tagger"]["lag"] == 0 and by_name["counter"]["lag"] == 0
    assert by_name["tagger"]["processed"] == 500 and by_name["counter"]["processed"] == 500
    assert by_name["counter"]["low_watermark"] == "end"
    assert by_name["counter"]["pending_timers"] == 0 and by_name["counter"]["timers_fired"] > 0
    assert after["injectors"][0]["final"] is True
    table = _status(kafka, name)
    assert "tagger" in table and "counter" in table and "injector:source/i0" in table
    assert w.stop() == 0


def test_seen_ids_are_forgotten_once_the_watermark_passes_the_horizon(kafka, name, workers):
    p = three_stage(name)
    setup_topics(kafka.bootstrap, p)
    w = workers(REF, name, slot="s0", env={"KWHEEL_DEDUP_HORIZON_MS": "5000"})
    t0 = (int(time.time() * 1000) // 1000 - 60) * 1000
    inj = Injector(
        p, "source", ["events"], WorkerConfig(bootstrap_servers=kafka.bootstrap), instance="i0"
    )
    rid = inj.send("events", "k", {"seq": 1}, timestamp=t0)
    inj.advance(t0 + 1000)
    inj.publish()
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:tagger/") >= t0 + 1000,
        30,
        "watermark t0+1s",
    )
    inj.send("events", "k", {"seq": 1}, timestamp=t0, id=rid)  # within the horizon: a duplicate
    inj.advance(t0 + 10_000)
    inj.publish()
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:tagger/") >= t0 + 10_000,
        30,
        "watermark t0+10s",
    )
    inj.send(
        "events", "k", {"seq": 1}, timestamp=t0, id=rid
    )  # past the horizon: forgotten, so late
    inj.close(final=True)
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:counter/") == MAX_WATERMARK,
        30,
        "end of input",
    )
    assert w.stop() == 0
    mid = [json.loads(r.value) for r in read_committed(kafka.bootstrap, f"{name}.mid")]
    assert [(m["seq"], m["late"]) for m in mid] == [(1, False), (1, True)]
    assert w.task_counters("tagger")["duplicates"] == 1


def test_a_zombie_watermark_after_the_next_owner_announced_is_ignored(kafka, name, workers):
    """A process that lost its task but does not know yet may still publish a watermark
    from stale state; once the next owner announced itself, no one may use it."""
    from kwheel.watermarks.control import TASK, Control
    from kwheel.watermarks.transport import WatermarkPublisher

    p = three_stage(name)
    setup_topics(kafka.bootstrap, p)
    t0 = (int(time.time() * 1000) // 1000 - 600) * 1000
    inj = Injector(
        p, "source", ["events"], WorkerConfig(bootstrap_servers=kafka.bootstrap), instance="i0"
    )
    send_steady(inj, range(400), 13, t0, t0 + 2_000)
    w = workers(REF, name, slot="s0")
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:counter/") >= t0 + 2_000,
        30,
        "first watermarks",
    )
    assert w.stop() == 0
    w = workers(
        REF, name, slot="s0", tag="s0-again"
    )  # incarnation 2 of every task announces itself
    tagger = "task:tagger/0"

    def raw():
        return [
            Control.decode(r.value) for r in read_committed(kafka.bootstrap, f"{name}.watermarks")
        ]

    wait_until(
        lambda: any(c.producer == tagger and c.incarnation == 2 for c in raw()),
        30,
        "the new owner's announcement",
    )
    stale = t0 + 3_600_000  # far beyond anything the injector allows
    zombie = WatermarkPublisher(
        WorkerConfig(bootstrap_servers=kafka.bootstrap), f"{name}.watermarks"
    )
    zombie.publish(
        Control(tagger, TASK, ["mid"], stale, [], int(time.time() * 1000), incarnation=1)
    )
    zombie.flush()
    send_steady(inj, range(400, 800), 13, t0, t0 + 6_000)
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:counter/") >= t0 + 6_000,
        30,
        "watermarks to move on",
    )
    inj.close(final=True)
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:counter/") == MAX_WATERMARK,
        30,
        "end of input",
    )
    assert w.stop() == 0
    controls = raw()
    assert any(c.watermark == stale for c in controls)  # it is on the topic...
    assert all(
        c.watermark != stale for c in read_controls(kafka.bootstrap, name)
    )  # ...and readers drop it
    owner = [
        c.watermark
        for c in controls
        if c.producer == tagger and c.incarnation == 2 and c.watermark < MAX_WATERMARK
    ]
    assert owner and max(owner) < stale, "the new owner took over the zombie's watermark"
    check_monotonic(read_controls(kafka.bootstrap, name))
    check_windows(kafka, name, [(f"k{i % 13}", t0 + i * 10, i) for i in range(800)])
