"""Event-time results survive faults in an upstream stage while downstream lags.

Why these tests exist: with ``relay`` (pass-through) feeding a slow ``win`` (1 s tumbling
windows, tests/pipelines/relay_windows.py), restarting the ``relay`` worker while ``win``
still had a backlog lost hundreds of windows and thousands of records from the results,
and ``win`` counted thousands of late records although the injector sent everything in
timestamp order. Whatever a restarted or moved upstream task publishes must never let a
downstream task's watermark pass records that task has not read yet.

Each test injects records in timestamp order (disorder 0, final watermark at the end),
with ``win`` in its own worker and behind, hits the ``relay`` worker while ``win`` still
has a backlog, then checks every (key, window) result against a reference computed from
the injected events, each emitted exactly once, and that ``win`` saw no late record.
"""

import json
import time
from collections import Counter

from confluent_kafka import Consumer, TopicPartition

from kwheel.config import WorkerConfig
from kwheel.injector import BoundedDisorder, Injector
from kwheel.testing.processes import wait_until
from kwheel.testing.readers import read_committed
from kwheel.watermarks import MAX_WATERMARK
from tests.helpers import (
    committed_total,
    latest_watermark,
    records_behind_a_usable_watermark,
    setup_topics,
)
from tests.pipelines.relay_windows import pipeline

REF = "tests.pipelines.relay_windows:pipeline"
RECORDS, KEYS, STEP_MS = 6000, 15, 50  # 300 one-second windows, 4,500 (key, window) results
# win needs about 20 s for its backlog, the faults take about 12 s; small batches keep
# its consumer position (what makes upstream watermarks usable) close to its progress
WIN_ENV = {"KWHEEL_TEST_WIN_SLEEP_MS": "3"}
WIN_ARGS = ["-c", "win", "--batch-size", "100"]


class Run:
    """The pipeline with all records injected, ``relay`` done and ``win`` lagging."""

    def __init__(self, kafka, name, workers, relay_env=None, while_relaying=None):
        self.kafka, self.name, self.workers = kafka, name, workers
        self.p = pipeline(name)
        setup_topics(kafka.bootstrap, self.p)
        self.win = workers(REF, name, slot="win", args=WIN_ARGS, env=WIN_ENV)
        self.relay = self.workers(REF, name, slot="relay", args=["-c", "relay"], env=relay_env)
        t0 = (int(time.time() * 1000) // 1000 - 3600) * 1000
        self.events = [(f"k{i % KEYS}", t0 + i * STEP_MS, i) for i in range(RECORDS)]
        inj = Injector(
            self.p,
            "source",
            ["events"],
            WorkerConfig(bootstrap_servers=kafka.bootstrap),
            instance="i0",
        )
        policy = BoundedDisorder(0)
        for key, ts, seq in self.events:
            inj.send("events", key, {"seq": seq}, timestamp=ts)
            inj.advance(policy.observe(ts))
        inj.close(final=True)
        if while_relaying is not None:
            while_relaying(self)
        group, parts = self.p.group_id("relay"), self.p.streams["events"].partitions

        def relayed_all():
            if not self.relay.alive():  # a supervisor restarts a worker that gave up
                self.relay = self.workers(
                    REF,
                    name,
                    slot="relay",
                    args=["-c", "relay"],
                    env=relay_env,
                    tag=f"relay-restarted-{time.monotonic():.0f}",
                )
            return committed_total(kafka.bootstrap, group, f"{name}.events", parts) == RECORDS

        wait_until(relayed_all, 90, "relay to pass every record on")
        relayed = read_committed(kafka.bootstrap, f"{name}.relayed")
        assert len(relayed) == RECORDS
        self.ends = {
            r.partition: r.offset + 1 for r in relayed
        }  # past each partition's last record
        self.behind_at_faults: list[int] = []  # records win still had to commit at each fault

    def relay_worker(self, slot, tag=None):
        """A new relay worker, once it owns its tasks: the next fault hits a running relay
        (on a busy machine, a SIGTERM sent a few seconds after the start could land before
        the process had even set up its signal handlers)."""
        w = self.workers(REF, self.name, slot=slot, tag=tag, args=["-c", "relay"])
        wait_until(
            lambda: "assigned and ready" in w.log() or not w.alive(),
            60,
            f"relay worker {tag or slot} to own its tasks",
        )
        return w

    def backlog(self):
        """Records of ``relayed`` that win has not committed yet (offsets, not counting markers)."""
        c = Consumer(
            {
                "bootstrap.servers": self.kafka.bootstrap,
                "group.id": self.p.group_id("win"),
                "log_level": 0,
            }
        )
        try:
            done = c.committed(
                [TopicPartition(f"{self.name}.relayed", p) for p in self.ends], timeout=10
            )
        finally:
            c.close()
        return sum(max(0, self.ends[tp.partition] - max(tp.offset, 0)) for tp in done)

    def fault_after(self, gap_s):
        """Wait ``gap_s`` (the deliberate gap between faults), note win's backlog."""
        time.sleep(gap_s)
        self.behind_at_faults.append(self.backlog())

    def check_results(self):
        wait_until(lambda: self.backlog() == 0, 60, "win to commit every record")
        wait_until(
            lambda: latest_watermark(self.kafka.bootstrap, self.name, "task:win/") == MAX_WATERMARK,
            30,
            "win to reach the end of input",
        )
        assert self.win.stop() == 0
        late = self.win.task_counters("win")["late"]
        expected: dict[tuple[str, int], tuple[int, int]] = {}
        for key, ts, seq in self.events:
            count, total = expected.get((key, ts // 1000 * 1000), (0, 0))
            expected[(key, ts // 1000 * 1000)] = (count + 1, total + seq)
        out = [
            json.loads(r.value)
            for r in read_committed(self.kafka.bootstrap, f"{self.name}.windows")
        ]
        got = {(w["key"], w["start"]): (w["count"], w["sum"]) for w in out}
        summary = {
            "wrong or missing windows": sum(got.get(k) != v for k, v in expected.items()),
            "windows emitted twice": sum(
                n > 1 for n in Counter((w["key"], w["start"]) for w in out).values()
            ),
            "unexpected windows": len(got.keys() - expected.keys()),
            "records missing": sum(n - got.get(k, (0, 0))[0] for k, (n, _) in expected.items()),
            "late at win": late,
            # what any reader of relayed could have found behind a watermark it may use
            "records behind a usable watermark": len(
                records_behind_a_usable_watermark(self.kafka.bootstrap, self.p, "win")
            ),
        }
        assert summary == dict.fromkeys(summary, 0), (
            f"{summary} (of {len(expected)} windows, {RECORDS} records; "
            f"win's backlog at the faults: {self.behind_at_faults})"
        )
        assert all(self.behind_at_faults), (
            f"win had caught up at a fault ({self.behind_at_faults}): slow it down"
        )


def test_relay_restarted_gracefully_while_win_lags(kafka, name, workers):
    run = Run(kafka, name, workers)
    for i, gap in enumerate((2, 3, 4)):
        run.fault_after(gap)
        assert run.relay.stop() == 0
        run.relay = run.relay_worker("relay", tag=f"relay-{i}")
    run.check_results()


def test_relay_killed_and_restarted_while_win_lags(kafka, name, workers):
    run = Run(kafka, name, workers)
    for i, gap in enumerate((2, 3)):
        run.fault_after(gap)
        run.relay.kill()
        run.relay = run.relay_worker("relay", tag=f"relay-{i}")
    run.check_results()


def test_relay_rebalanced_while_win_lags(kafka, name, workers):
    run = Run(kafka, name, workers)
    run.fault_after(2)
    # a dynamic member (no slot): a static one that stops keeps its partitions until its
    # session expires (docs/operations.md), which the embedded broker never does
    extra = run.relay_worker(None, tag="relay-extra")
    wait_until(
        lambda: "assigned and ready" in extra.log(), 30, "the second relay worker to own partitions"
    )
    run.fault_after(3)
    before = run.relay.log().count("assigned and ready")
    assert extra.stop() == 0
    wait_until(
        lambda: run.relay.log().count("assigned and ready") > before,
        30,
        "relay to take its partitions back",
    )
    run.check_results()


def test_a_relay_transaction_aborted_after_its_watermark_rose(kafka, name, workers, tmp_path):
    # relay's user function outlasts the transaction timeout once: the batch is aborted at
    # the tick that had raised relay's input watermark from positions past the batch. Kept,
    # that watermark went out before the batch's replay, whose records then came late to win.
    mark = tmp_path / "slow-once"
    run = Run(
        kafka,
        name,
        workers,
        relay_env={
            "KWHEEL_TRANSACTION_TIMEOUT_MS": "2000",
            "KWHEEL_TEST_RELAY_SLOW_SEQ": str(RECORDS // 2),
            "KWHEEL_TEST_RELAY_SLOW_S": "3",
            "KWHEEL_TEST_RELAY_SLOW_MARK": str(mark),
        },
    )
    assert mark.exists()
    run.behind_at_faults.append(run.backlog())
    assert run.relay.stop() == 0
    assert run.relay.task_counters("relay")["aborts"] >= 1
    run.check_results()


def test_a_broker_stall_longer_than_the_transaction_timeout_while_relay_works(kafka, name, workers):
    # relay's open transactions outlive their timeout while the broker is frozen; whatever
    # relay does then (abort and replay, or give up and be restarted), win must not see a
    # watermark pass the replayed records
    def stall(run):
        # relay is busy now: its first batch is committed, the rest of 6,000 records at
        # 1 ms each still to go (a fixed second after the injection was not always enough
        # for it to own its tasks on a busy machine: the stall then hit no transaction)
        wait_until(
            lambda: (
                committed_total(
                    kafka.bootstrap,
                    run.p.group_id("relay"),
                    f"{name}.events",
                    run.p.streams["events"].partitions,
                )
                > 0
            ),
            60,
            "relay's first commit",
        )
        kafka.pause()
        try:
            time.sleep(6)  # the fault: the broker frozen for twice the transaction timeout
        finally:
            kafka.resume()

    run = Run(
        kafka,
        name,
        workers,
        # batches of at most 500 records (0.5 s of sleeping): only the stall makes one
        # outlive the timeout. A whole partition (2,400 records, 2.4 s) in one batch took
        # more than 3 s on a busy machine every time: aborted and replayed for ever.
        relay_env={
            "KWHEEL_TEST_RELAY_SLEEP_MS": "1",
            "KWHEEL_TRANSACTION_TIMEOUT_MS": "3000",
            "KWHEEL_BATCH_SIZE": "500",
        },
        while_relaying=stall,
    )
    run.behind_at_faults.append(run.backlog())
    run.check_results()
