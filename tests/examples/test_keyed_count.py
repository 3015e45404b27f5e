"""examples/keyed_count.py: in the driver, and end to end on the broker with the same result."""

import time
from collections import Counter

from examples.keyed_count import build

REF = "examples.keyed_count:pipeline"
EVENTS = [
    (f"user{i % 7}", {"user": f"user{i % 7}", "action": "click", "seq": i}) for i in range(300)
]


def test_counts_per_user_in_the_driver(kwheel_driver):
    d = kwheel_driver(build(), wall_clock_ms=0)
    for i, (user, value) in enumerate(EVENTS):
        d.send("events", user, value, timestamp=1_000 + i)
    counts = d.outputs("counts")
    assert len(counts) == len(EVENTS)
    per_user = Counter(user for user, _ in EVENTS)
    for user, n in per_user.items():
        assert [r.value["count"] for r in counts if r.key == user] == list(range(1, n + 1))
        assert d.state("counter", user) == {"count": n}
    assert d.stats("counter")["processed"] == len(EVENTS)


def test_counts_end_to_end_match_the_driver(kwheel_driver, kwheel_pipeline_runner, name):
    start = int(time.time() * 1000)  # brokers delete records older than their retention at once
    d = kwheel_driver(build(name), wall_clock_ms=0)
    run = kwheel_pipeline_runner(build(name), REF, env={"KWHEEL_KEYED_COUNT_NAME": name})
    run.start_workers(1)
    for i, (user, value) in enumerate(EVENTS):
        d.send("events", user, value, timestamp=start + i, id=i.to_bytes(8, "big"))
        run.send("events", user, value, timestamp=start + i, id=i.to_bytes(8, "big"))
    run.finish()
    on_kafka = run.wait_for_outputs("counts", len(EVENTS), 60)
    run.stop_workers()
    # ids too: outputs derive theirs from their inputs', the same on both sides
    assert sorted((r.key, r.value["count"], r.timestamp, r.id) for r in on_kafka) == sorted(
        (r.key, r.value["count"], r.timestamp, r.id) for r in d.outputs("counts")
    )
    assert run.stats("counter")["processed"] == d.stats("counter")["processed"] == len(EVENTS)
