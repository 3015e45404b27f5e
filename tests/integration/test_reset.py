"""`kwheel reset` on a real broker: a stopped pipeline, reset, processes its inputs again
from the start, from empty state, with the same results as the first time."""

import json
import time
from collections import Counter

from kwheel.config import WorkerConfig
from kwheel.injector import BoundedDisorder, Injector
from kwheel.testing.processes import wait_until
from kwheel.testing.readers import read_committed
from kwheel.watermarks import MAX_WATERMARK
from kwheel.watermarks.control import task_producer_id
from kwheel.watermarks.transport import read_to_end
from tests.helpers import error_line, run_kwheel, setup_topics
from tests.pipelines.relay_windows import pipeline

REF = "tests.pipelines.relay_windows:pipeline"
RECORDS, KEYS, STEP_MS = 1500, 7, 40  # 60 one-second windows per key


def windows_at_the_end(cfg, p) -> bool:
    """Every win task published the end of input (as readers see it now: after a reset,
    what the tasks published before is forgotten)."""
    table = read_to_end(cfg, p.watermark_topic())
    latest = [
        table.latest(task_producer_id("win", i)) for i in range(p.computations["win"].partitions)
    ]
    return all(c is not None and c.watermark == MAX_WATERMARK for c in latest)


def windows(bootstrap, topic, skip=frozenset()):
    """(key, window start) -> (count, sum) of the window results not at a position in ``skip``,
    each result once; and the positions read."""
    out, seen = {}, set()
    for r in read_committed(bootstrap, topic):
        seen.add((r.partition, r.offset))
        if (r.partition, r.offset) in skip:
            continue
        v = json.loads(r.value)
        assert (v["key"], v["start"]) not in out, f"window {v['key']}@{v['start']} emitted twice"
        out[(v["key"], v["start"])] = (v["count"], v["sum"])
    return out, seen


def test_a_reset_pipeline_reprocesses_its_inputs_with_the_same_results(
    kafka, name, workers, tmp_path
):
    p = pipeline(name)
    setup_topics(kafka.bootstrap, p)
    cfg = WorkerConfig(bootstrap_servers=kafka.bootstrap)
    env = {"KWHEEL_TEST_PIPELINE": name}
    t0 = (int(time.time() * 1000) // 1000 - 3600) * 1000
    events = [(f"k{i % KEYS}", t0 + i * STEP_MS, i) for i in range(RECORDS)]
    with Injector(p, "source", ["events"], cfg, instance="i0") as inj:
        policy = BoundedDisorder(0)
        for key, ts, seq in events:
            inj.send("events", key, {"seq": seq}, timestamp=ts)
            inj.advance(policy.observe(ts))
    want = Counter()
    sums = Counter()
    for key, ts, seq in events:
        want[(key, ts // 1000 * 1000)] += 1
        sums[(key, ts // 1000 * 1000)] += seq
    reference = {k: (want[k], sums[k]) for k in want}
    state = tmp_path / "state"

    w = workers(REF, name, state_dir=state)
    wait_until(lambda: windows_at_the_end(cfg, p), 90, "the first run to reach the end of input")
    running = run_kwheel(
        "reset", REF, "--yes", "-b", kafka.bootstrap, "--state-dir", str(state), env=env
    )
    assert running.returncode == 1
    assert "active member" in error_line(running) and f"{name}.relay" in error_line(running)
    assert w.stop() == 0
    first, seen = windows(kafka.bootstrap, f"{name}.windows")
    assert first == reference
    assert any(state.joinpath(name, "win").iterdir())

    declined = run_kwheel(
        "reset", REF, "-b", kafka.bootstrap, "--state-dir", str(state), env=env, stdin="n\n"
    )
    assert declined.returncode == 1 and "nothing deleted" in error_line(declined)
    r = run_kwheel("reset", REF, "--yes", "-b", kafka.bootstrap, "--state-dir", str(state), env=env)
    assert r.returncode == 0, r.stderr
    for said in (
        f"deleted consumer group {name}.relay",
        f"deleted consumer group {name}.win",
        f"set group {name}.win to the end of {name}.relayed",
        f"deleted changelog topic {name}.win.changelog and created it again",
        f"deleted local state stores {state / name / 'win'}",
    ):
        assert said in r.stdout, r.stdout
    assert not state.joinpath(name).joinpath("win").exists()
    assert not windows_at_the_end(cfg, p)  # what the tasks published is forgotten

    w2 = workers(REF, name, state_dir=state, tag="after-reset")
    wait_until(lambda: windows_at_the_end(cfg, p), 90, "the run after the reset to reach the end")
    assert w2.stop() == 0
    second, _ = windows(kafka.bootstrap, f"{name}.windows", skip=seen)
    assert second == reference  # every window again, once, with the same count: not doubled
    assert w2.task_counters("win")["late"] == 0  # no watermark from before the reset
    relayed = read_committed(kafka.bootstrap, f"{name}.relayed")
    assert len(relayed) == 2 * RECORDS  # relay wrote everything again, once
