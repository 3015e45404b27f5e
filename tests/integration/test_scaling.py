"""Scaling out and back in while records flow: 32 partitions per stage, workers added one
at a time from 1 to 4 and removed again (dynamic members, which leave their groups at
once). Results stay exact, and with cooperative rebalancing a task that does not move
is never revoked: it goes on committing through every change."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from kwheel.config import WorkerConfig
from kwheel.kafka.writer import StreamProducer
from kwheel.testing.processes import WorkerProcess, wait_until
from tests.helpers import check_exact_counts, count_outputs, setup_topics
from tests.integration.test_metrics import metrics_port, scrape
from tests.pipelines.counting import bucket_of, scaled_count

REF = "tests.pipelines.counting:scaled_count"
PARTS = 32
COMPUTATIONS = ("counter", "bucketer")
USERS = 400
Task = tuple[str, int]  # (computation, partition)


class Feed(threading.Thread):
    """Sends records to ``a`` and ``b`` (keyed by user) at a steady rate until stopped;
    remembers every user sent."""

    def __init__(self, bootstrap: str, pipeline, per_tick: int = 40):
        super().__init__(daemon=True)
        self.bootstrap, self.pipeline, self.per_tick = bootstrap, pipeline, per_tick
        self.users: list[str] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            cfg = WorkerConfig(bootstrap_servers=self.bootstrap)
            with StreamProducer(self.pipeline, cfg) as sp:
                i = 0
                while not self.halt.is_set():
                    now = int(time.time() * 1000)
                    for _ in range(self.per_tick):
                        user = f"u{i % USERS}"
                        value = {"user": user, "seq": i}
                        sp.send("a" if i % 2 else "b", user, value, timestamp=now)
                        self.users.append(user)
                        i += 1
                    sp.flush()
                    self.halt.wait(0.1)  # pacing: about 400 records/s
        except BaseException as e:  # surfaced by the test
            self.error = e


def owned(w: WorkerProcess) -> set[Task]:
    """The tasks a worker holds now, from its ready and closed events."""
    have: set[Task] = set()
    for e in w.task_events():
        t = (e["computation"], e["partition"])
        if e["event"] == "ready":
            have.add(t)
        elif e["event"] == "closed":
            have.discard(t)
    return have


def readies(w: WorkerProcess) -> Counter[Task]:
    return Counter((e["computation"], e["partition"]) for e in w.task_events("ready"))


def counters(port: int) -> dict[tuple[str, Task], float]:
    """(metric, task) -> value of the commit and processed counters."""
    out: dict[tuple[str, Task], float] = {}
    samples = scrape(port)
    for name in ("kwheel_commits_total", "kwheel_records_processed_total"):
        for labels, value in samples.get(name, []):
            out[(name, (labels["computation"], int(labels["partition"])))] = value
    return out


def revocations(w: WorkerProcess, t: Task) -> int:
    return w.log().count(f"{t[0]}[{t[1]}]: revoked") + w.log().count(
        f"{t[0]}[{t[1]}]: closed: revoked"
    )


def all_owned_once(live: list[WorkerProcess]) -> bool:
    tasks = [t for w in live for t in owned(w)]
    return len(tasks) == len(set(tasks)) == PARTS * len(COMPUTATIONS)


@pytest.mark.timeout(1200)
def test_workers_added_and_removed_while_records_flow(kafka, name, workers, tmp_path):
    p = scaled_count(name)
    setup_topics(kafka.bootstrap, p)
    feed = Feed(kafka.bootstrap, p)
    live: list[WorkerProcess] = []
    ports: dict[WorkerProcess, int] = {}

    def start() -> WorkerProcess:
        # heartbeats every 1.2 s: members hear of a rebalance sooner than the default 2 s
        # (6000 is the embedded broker's minimum session timeout)
        w = workers(
            REF, name, args=["--metrics-port", "0"], env={"KWHEEL_SESSION_TIMEOUT_MS": "6000"}
        )
        ports[w] = metrics_port(w)
        return w

    live.append(start())
    # 64 tasks, each claimed, fenced and given a producer: slow on a loaded machine
    wait_until(lambda: all_owned_once(live), 300, "the first worker to own every task")
    feed.start()
    moved_total = unmoved_total = 0
    try:
        for step in ["add"] * 3 + ["remove"] * 3:
            before = {w: owned(w) for w in live}
            ready_before = {w: readies(w) for w in live}
            stats_before = {w: counters(ports[w]) for w in live}
            revoked_before = {w: {t: revocations(w, t) for t in owned(w)} for w in live}
            if step == "add":
                live.append(start())
                wait_until(
                    lambda: all_owned_once(live) and owned(live[-1]),
                    300,
                    f"the tasks to spread over {len(live)} workers",
                )
            else:
                gone = live.pop()
                assert gone.stop() == 0, gone.tail()
                wait_until(
                    lambda: all_owned_once(live),
                    120,
                    f"the tasks of a removed worker to move to the {len(live)} left",
                )
            # a task that stayed with its worker was not revoked, reopened or paused
            for w in before:
                if w not in live:
                    continue
                after = counters(ports[w])
                stayed = before[w] & owned(w)
                assert stayed, f"{step}: worker {w.pid} kept none of its tasks"
                unmoved_total += len(stayed)
                moved_total += len(before[w] - stayed)
                active = 0
                for t in sorted(stayed):
                    assert readies(w)[t] == ready_before[w][t], f"{step}: {t} was reopened"
                    assert revocations(w, t) == revoked_before[w][t], (
                        f"{step}: {t} was revoked though it stayed"
                    )
                    done = after[("kwheel_records_processed_total", t)]
                    if done > stats_before[w][("kwheel_records_processed_total", t)]:
                        active += 1
                        c = ("kwheel_commits_total", t)
                        assert after[c] > stats_before[w][c], f"{step}: {t} stopped committing"
                assert active, f"{step}: no task that stayed on worker {w.pid} processed anything"
    finally:
        feed.halt.set()
        feed.join(30)
    assert feed.error is None, feed.error
    assert moved_total and unmoved_total > moved_total, (moved_total, unmoved_total)
    n = len(feed.users)
    for topic in ("counts", "buckets"):
        wait_until(
            lambda topic=topic: count_outputs(kafka.bootstrap, f"{name}.{topic}") >= n,
            120,
            f"all {n} {topic}",
        )
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(feed.users))
    check_exact_counts(
        kafka.bootstrap, f"{name}.buckets", Counter(bucket_of(u) for u in feed.users)
    )
    for w in live:
        assert w.stop() == 0, w.tail()
