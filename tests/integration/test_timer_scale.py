"""A million keys whose windows close at one watermark: bounded transactions, no abort loop.

Epoch-aligned windows close for every key at once. Fired in one transaction, a million
firings (a million outputs and tombstones) outlasted the transaction timeout, aborted, and
were replayed the same way for ever. Now a task fires at most MAX_FIRES_PER_TICK timers a
transaction and its watermark waits for the rest (kwheel/runtime/task.py).
"""

import json

from kwheel import Computation, Pipeline
from kwheel.config import WorkerConfig
from kwheel.injector import Injector
from kwheel.runtime.task import MAX_FIRES_PER_TICK
from kwheel.testing.processes import wait_until
from kwheel.testing.readers import read_committed
from kwheel.watermarks import MAX_WATERMARK
from tests.helpers import committed_total, latest_watermark, setup_topics, worker_stats

KEYS = 1_000_000
CLOSES_AT = 60_000  # every key's window ends here


class Closer(Computation):
    """One event-time timer per key, at the same time for all; it emits the key once."""

    def process_record(self, ctx, record):
        ctx.set_timer("close", CLOSES_AT)

    def process_timer(self, ctx, timer):
        ctx.produce("closed", ctx.key, {"key": ctx.key})


def closing(name: str | None = None) -> Pipeline:
    import os

    p = Pipeline(name or os.environ.get("KWHEEL_TEST_PIPELINE", "closing"))
    p.stream("events", partitions=2, value="json", source=True)
    p.stream("closed", partitions=2, value="json")
    p.computation("closer", Closer, inputs=["events"], outputs=["closed"])
    return p


def test_a_million_windows_closing_at_once_fire_in_bounded_transactions(kafka, name, workers):
    p = closing(name)
    setup_topics(kafka.bootstrap, p)
    inj = Injector(p, "source", ["events"], WorkerConfig(bootstrap_servers=kafka.bootstrap), instance="i0")
    for i in range(KEYS):
        inj.send("events", f"k{i}", {}, timestamp=i % CLOSES_AT)
    inj.advance(CLOSES_AT - 1)
    inj.publish()
    # a transaction timeout one round of a million firings would outlast many times over
    w = workers("tests.integration.test_timer_scale:closing", name, slot="s0",
                env={"KWHEEL_TRANSACTION_TIMEOUT_MS": "20000"})
    wait_until(lambda: committed_total(kafka.bootstrap, p.group_id("closer"), f"{name}.events", 2) >= KEYS, 300,
               "every record processed")
    inj.close(final=True)  # the watermark passes CLOSES_AT: every timer is due at once
    # the output watermark reaches the end once no timer is pending
    wait_until(lambda: latest_watermark(kafka.bootstrap, name, "task:closer/") == MAX_WATERMARK, 600,
               "every window to close")
    assert w.stop() == 0
    closed = read_committed(kafka.bootstrap, f"{name}.closed", timeout_s=120)
    keys = [json.loads(r.value)["key"] for r in closed]
    assert len(keys) == len(set(keys)) == KEYS
    stats = worker_stats(w.log(), "closer")
    assert stats["aborts"] == 0 and stats["timers_fired"] == KEYS
    assert stats["commits"] >= KEYS // MAX_FIRES_PER_TICK
