"""`kwheel injector retire` on a real broker: a dead injector instance stops holding the
watermark back, and what it publishes afterwards is ignored."""

import json
import time
from collections import Counter

from kwheel.config import WorkerConfig
from kwheel.injector import Injector
from kwheel.testing.processes import wait_until
from kwheel.testing.readers import read_committed
from kwheel.watermarks import MAX_WATERMARK
from kwheel.watermarks.transport import read_to_end
from kwheel.watermarks.upstream import Upstream
from tests.helpers import error_line, latest_watermark, run_kwheel, setup_topics
from tests.pipelines.windowed import tumbling

REF = "tests.pipelines.windowed:tumbling"


def test_a_watermark_held_by_a_dead_injector_instance_advances_once_it_is_retired(
    kafka, name, workers
):
    p = tumbling(name)
    setup_topics(kafka.bootstrap, p)
    cfg = WorkerConfig(bootstrap_servers=kafka.bootstrap)
    w = workers(REF, name)
    t0 = (int(time.time() * 1000) // 1000 - 600) * 1000
    events = [(f"k{i % 7}", t0 + i * 10, i) for i in range(800)]  # 8 one-second windows
    # instance "a" sends the first half, publishes its watermark and dies (no final);
    # instance "b" sends the rest and finishes
    a = Injector(p, "load", ["events"], cfg, instance="a")
    for key, ts, seq in events[:400]:
        a.send("events", key, {"seq": seq}, timestamp=ts)
    held = events[399][1] + 1
    a.advance(held)
    a.publish()
    with Injector(p, "load", ["events"], cfg, instance="b") as b:
        for key, ts, seq in events[400:]:
            b.send("events", key, {"seq": seq}, timestamp=ts)
        b.advance(events[-1][1] + 1)
    # the stream's watermark is a's, the lower one: the windows after it stay open
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:agg/") == held,
        60,
        "the aggregation's watermark to reach the dead instance's",
    )

    refused = run_kwheel(
        "injector",
        "retire",
        REF,
        "load",
        "a",
        "-b",
        kafka.bootstrap,
        env={"KWHEEL_TEST_PIPELINE": name},
    )
    assert refused.returncode == 1
    assert "may be alive" in error_line(refused) and "injector:load/a" in error_line(refused)
    unknown = run_kwheel(
        "injector",
        "retire",
        REF,
        "load",
        "c",
        "-b",
        kafka.bootstrap,
        env={"KWHEEL_TEST_PIPELINE": name},
    )
    assert unknown.returncode == 1
    assert "injector:load/a, injector:load/b" in error_line(unknown)

    r = run_kwheel(
        "injector",
        "retire",
        REF,
        "load",
        "a",
        "--force",
        "-b",
        kafka.bootstrap,
        env={"KWHEEL_TEST_PIPELINE": name},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("retired injector:load/a: the watermark of events no longer waits")
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:agg/") == MAX_WATERMARK,
        60,
        "the aggregation's watermark to reach the end once a is retired",
    )
    assert w.stop() == 0
    want = Counter((key, ts // 1000 * 1000) for key, ts, _ in events)
    got = Counter()
    for rec in read_committed(kafka.bootstrap, f"{name}.results"):
        v = json.loads(rec.value)
        got[(v["key"], v["start"])] += v["count"]
    assert got == want

    # the dead instance comes back (a zombie, or a restart): it cannot hold the stream back
    a.advance(held + 1)
    a.publish()
    zombie = Injector(p, "load", ["events"], cfg, instance="a")  # warns: it was retired
    zombie.publish()
    table = read_to_end(cfg, p.watermark_topic())
    for part in range(p.computations["agg"].partitions):
        assert Upstream(p, "agg", part).watermark(table, lambda t: 10**9) == MAX_WATERMARK
    again = run_kwheel(
        "injector",
        "retire",
        REF,
        "load",
        "a",
        "-b",
        kafka.bootstrap,
        env={"KWHEEL_TEST_PIPELINE": name},
    )
    assert again.returncode == 0 and "already retired" in again.stdout
    status = run_kwheel(
        "status", REF, "--json", "-b", kafka.bootstrap, env={"KWHEEL_TEST_PIPELINE": name}
    )
    injectors = {i["producer"]: i for i in json.loads(status.stdout)["injectors"]}
    assert injectors["injector:load/a"]["retired"] and injectors["injector:load/a"]["final"]
    assert not injectors["injector:load/b"]["retired"]
