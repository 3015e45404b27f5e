"""Rebalance pause: 4 workers own a 32-partition keyed count while records flow; a fifth
joins. For every task that stays with its worker, the longest time between two of its
commits from the join until the group settled (every task ready once), next to the same
measure over the seconds before the join (the baseline: commits of a task with records
come every commit interval). Once per ``--rebalancing`` setting. Commit counts are
scraped from the workers' metrics every 50 ms, so gaps are measured to about 0.05 s.
A fresh embedded broker unless ``--bootstrap``. Prints one JSON object per setting.

    .venv/bin/python -m benchmarks.rebalance [--rebalancing cooperative eager]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.pipelines import wide_count
from kwheel.config import WorkerConfig
from kwheel.kafka import clients
from kwheel.kafka.topics import create_topics
from kwheel.kafka.writer import StreamProducer
from kwheel.testing.broker import EmbeddedBroker
from kwheel.testing.processes import WorkerProcess, wait_until

ROOT = Path(__file__).resolve().parent.parent
REF = "benchmarks.pipelines:wide_count"
PARTITIONS = 32
SAMPLE_S = 0.05
Task = tuple[str, int]


def commits(port: int) -> dict[int, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[int, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "kwheel_commits_total":
                out[int(s.labels["partition"])] = s.value
    return out


def owned(w: WorkerProcess) -> set[int]:
    have: set[int] = set()
    for e in w.task_events():
        if e["event"] == "ready":
            have.add(e["partition"])
        elif e["event"] == "closed":
            have.discard(e["partition"])
    return have


class Sampler(threading.Thread):
    """Per (worker, partition): the times its commit count went up."""

    def __init__(self, ports: dict[int, int]):
        super().__init__(daemon=True)
        self.ports = ports  # worker index -> metrics port
        self.last: dict[tuple[int, int], float] = {}
        self.ups: dict[tuple[int, int], list[float]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for i, port in list(self.ports.items()):
                try:
                    now, seen = time.monotonic(), commits(port)
                except OSError:
                    continue
                for p, n in seen.items():
                    if n != self.last.get((i, p)):
                        self.last[(i, p)] = n
                        self.ups.setdefault((i, p), []).append(now)
            self.halt.wait(SAMPLE_S)  # the sampling period

    def longest_gap(self, key: tuple[int, int], start: float, end: float) -> float:
        times = [start] + [t for t in self.ups.get(key, []) if start < t < end] + [end]
        return max(b - a for a, b in zip(times, times[1:], strict=False))


def feed(cfg: WorkerConfig, pipeline, halt: threading.Event, rate: int) -> None:
    with StreamProducer(pipeline, cfg) as sp:
        i = 0
        while not halt.is_set():
            for _ in range(rate // 20):
                sp.send("events", f"k{(i * 7919) % 20000}", {"i": i})
                i += 1
            sp.flush()
            halt.wait(0.05)  # pacing


def measure(bootstrap: str, work: Path, rebalancing: str, rate: int) -> dict:
    name = f"rebalance-{rebalancing}-{int(time.time())}"
    p = wide_count(name)
    cfg = WorkerConfig(bootstrap_servers=bootstrap)
    create_topics(clients.admin(cfg), p)
    env = {
        **os.environ,
        "KWHEEL_BENCH_PIPELINE": name,
        "KWHEEL_REBALANCING": rebalancing,
        "PYTHONPATH": str(ROOT),
    }
    workers: list[WorkerProcess] = []
    ports: dict[int, int] = {}
    sampler = Sampler(ports)
    halt = threading.Event()
    feeder = threading.Thread(target=feed, args=(cfg, p, halt, rate), daemon=True)

    def add() -> WorkerProcess:
        i = len(workers)
        w = WorkerProcess(
            REF,
            bootstrap,
            work / f"{name}-state-{i}",
            work / f"{name}-{i}.log",
            extra_args=["--metrics-port", "0"],
            env=env,
            new_session=True,
        )
        w.cwd = ROOT
        workers.append(w.start())
        m = wait_until(
            lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", w.log()),
            60,
            "the metrics port",
        )
        ports[i] = int(m.group(1))
        return w

    def settled() -> bool:
        tasks = [t for w in workers for t in owned(w)]
        return len(tasks) == len(set(tasks)) == PARTITIONS and all(owned(w) for w in workers)

    try:
        feeder.start()
        sampler.start()
        for _ in range(4):
            add()
            wait_until(settled, 300, f"{len(workers)} workers to settle")
        before = {i: owned(w) for i, w in enumerate(workers)}
        baseline_end = time.monotonic()
        time.sleep(5)  # a baseline window of steady commits
        joined = time.monotonic()
        add()
        wait_until(settled, 300, "five workers to settle")
        done = time.monotonic()
        stayed = [(i, q) for i, w in enumerate(workers[:4]) for q in before[i] & owned(w)]
        gaps = [sampler.longest_gap(k, joined, done) for k in stayed]
        base = [sampler.longest_gap(k, baseline_end, joined) for k in stayed]
    finally:
        halt.set()
        sampler.halt.set()
        for w in workers:
            w.end(30)
    return {
        "figure": "rebalance_pause",
        "rebalancing": rebalancing,
        "partitions": PARTITIONS,
        "tasks_stayed": len(stayed),
        "tasks_moved": PARTITIONS - len(stayed),
        "rebalance_s": round(done - joined, 2),
        "values": {
            "longest_gap_max_s": round(max(gaps), 2),
            "longest_gap_median_s": round(statistics.median(gaps), 2),
            "baseline_longest_gap_max_s": round(max(base), 2),
            "baseline_longest_gap_median_s": round(statistics.median(base), 2),
        },
        "unit": "s between two commits of a task that stayed, during the join",
        "rate": rate,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rebalancing", nargs="+", default=["cooperative", "eager"])
    ap.add_argument("--rate", type=int, default=1000, help="records per second")
    ap.add_argument("--bootstrap", help="a running broker instead of fresh embedded ones")
    a = ap.parse_args()
    for rebalancing in a.rebalancing:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            broker = None if a.bootstrap else EmbeddedBroker(data_dir=work / "broker").start()
            try:
                bootstrap = a.bootstrap or broker.bootstrap  # type: ignore[union-attr]
                print(json.dumps(measure(bootstrap, work, rebalancing, a.rate)), flush=True)
            finally:
                if broker is not None:
                    broker.stop()


if __name__ == "__main__":
    main()
