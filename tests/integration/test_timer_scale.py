"""A million keys whose windows close at one watermark: bounded transactions, no abort loop.

Epoch-aligned windows close for every key at once. Fired in one transaction, a million
firings (a million outputs and tombstones) outlasted the transaction timeout, aborted, and
were replayed the same way for ever. Now a task fires at most MAX_FIRES_PER_TICK timers a
transaction and its watermark waits for the rest (kwheel/runtime/task.py).
"""

import json
import os
import time

import pytest
from confluent_kafka import Producer

from kwheel import Computation, Pipeline
from kwheel.config import WorkerConfig
from kwheel.injector import Injector
from kwheel.runtime.task import MAX_FIRES_PER_TICK
from kwheel.testing.processes import wait_until
from kwheel.testing.readers import read_committed
from kwheel.watermarks import MAX_WATERMARK
from tests.helpers import committed_total, latest_watermark, setup_topics

KEYS = int(os.environ.get("KWHEEL_TEST_TIMER_KEYS", "1000000"))  # about 2 minutes on 2 cores

# CPU-bound under a 3 s transaction timeout: with other tests beside it on 2 cores, a
# transaction of 10,000 firings once took longer and was aborted. Its own waits add up to
# more than the suite's 300 s per test.
pytestmark = [pytest.mark.alone, pytest.mark.timeout(1200)]


class Closer(Computation):
    """One event-time timer per key, at the same time for all; it emits the key once."""

    def process_record(self, ctx, record):
        ctx.set_timer("close", record.value["closes"])

    def process_timer(self, ctx, timer):
        ctx.produce("closed", ctx.key, {"key": ctx.key})


def closing(name: str | None = None) -> Pipeline:
    p = Pipeline(name or os.environ.get("KWHEEL_TEST_PIPELINE", "closing"))
    p.stream("events", partitions=2, value="json", source=True)
    p.stream("closed", partitions=2, value="json")
    p.computation("closer", Closer, inputs=["events"], outputs=["closed"])
    return p


def test_a_million_windows_closing_at_once_fire_in_bounded_transactions(kafka, name, workers):
    p = closing(name)
    setup_topics(kafka.bootstrap, p)
    closes = (
        int(time.time()) // 60 - 10
    ) * 60_000  # a minute's end, recent (retention goes by timestamp)
    value = json.dumps({"closes": closes}).encode()
    raw = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 20, "log_level": 0})
    for i in range(KEYS):  # written as any Kafka producer would (ids from positions), fast
        while True:
            try:
                raw.produce(
                    f"{name}.events",
                    value,
                    f"k{i}".encode(),
                    timestamp=closes - 60_000 + i % 60_000,
                )
                break
            except BufferError:
                raw.poll(0.05)
    assert raw.flush(60) == 0
    inj = Injector(
        p, "source", ["events"], WorkerConfig(bootstrap_servers=kafka.bootstrap), instance="i0"
    )
    inj.advance(closes - 1)
    inj.publish()  # covers everything written above: the watermark stops just before the windows close
    # 10,000 firings take well under a second; one round of each task's 100,000 (before the
    # cap) took several, past this timeout: aborted and replayed the same, for ever
    w = workers(
        "tests.integration.test_timer_scale:closing",
        name,
        slot="s0",
        env={"KWHEEL_TRANSACTION_TIMEOUT_MS": "3000"},
    )
    wait_until(
        lambda: committed_total(kafka.bootstrap, p.group_id("closer"), f"{name}.events", 2) >= KEYS,
        300,
        "every record processed",
    )
    inj.close(final=True)  # the watermark passes every window's end: every timer is due at once
    # the output watermark reaches the end once no timer is pending
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:closer/") == MAX_WATERMARK,
        600,
        "every window to close",
    )
    assert w.stop() == 0
    closed = read_committed(kafka.bootstrap, f"{name}.closed", timeout_s=120)
    keys = [json.loads(r.value)["key"] for r in closed]
    assert len(keys) == len(set(keys)) == KEYS
    stats = w.task_counters("closer")
    # A capped transaction fires 10,000 timers in well under the 3 s timeout on a quiet
    # machine; on a loaded one it can outlast it, and each such abort halves the cap
    # (Task._expired): a few at most. Uncapped, or replayed at the same size, the
    # transaction would abort for ever and the windows never close.
    assert stats["aborts"] <= 5, stats
    assert stats["timers_fired"] >= KEYS
    assert stats["commits"] >= KEYS // MAX_FIRES_PER_TICK
