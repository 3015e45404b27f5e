"""Failover time: a worker owning tasks with ``--keys`` keys of state (1,000,000 by default)
is SIGKILLed while records flow; the time until the first output of a record sent after
the kill is committed, with the slot restarted at once

- warm: on its state directory (a restart in place: only the changelog's tail is replayed);
- cold: on an empty state directory (a new machine: the whole changelog is restored).

The state is a one-stage relay (``benchmarks.pipelines:chain`` with one stage, which keeps
a count per key); its changelog is written straight into the topic in the store's layout
(benchmarks/restore.py). Records are sent at ``--rate`` per second with their send time;
a read_committed reader tails the output. A fresh embedded broker unless ``--bootstrap``.
Prints one JSON object.

    .venv/bin/python -m benchmarks.failover [--keys N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks.pipelines import chain
from benchmarks.restore import write_changelog
from kwheel.config import WorkerConfig
from kwheel.kafka import clients
from kwheel.kafka.topics import create_topics
from kwheel.kafka.writer import StreamProducer
from kwheel.testing.broker import EmbeddedBroker
from kwheel.testing.processes import WorkerProcess, wait_until
from kwheel.testing.readers import CommittedTail

ROOT = Path(__file__).resolve().parent.parent
REF = "benchmarks.pipelines:chain"


class Feed(threading.Thread):
    """Records with their send time, ``rate`` per second, over keys the state holds."""

    def __init__(self, cfg: WorkerConfig, pipeline, keys: int, rate: int):
        super().__init__(daemon=True)
        self.cfg, self.pipeline, self.keys, self.rate = cfg, pipeline, keys, rate
        self.halt = threading.Event()

    def run(self) -> None:
        with StreamProducer(self.pipeline, self.cfg) as sp:
            i = 0
            while not self.halt.is_set():
                for _ in range(max(1, self.rate // 20)):
                    key = f"r{(i * 7919) % self.keys:07d}"
                    sp.send("events", key, {"sent": time.time(), "i": i})
                    i += 1
                sp.flush()
                self.halt.wait(0.05)  # pacing


def first_output_after(tail: CommittedTail, t_wall: float, timeout_s: float) -> float:
    """Wall time at which a record sent after ``t_wall`` was first seen committed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for r in tail.poll(0.05):
            if json.loads(r.value)["sent"] > t_wall:
                return time.time()
    raise TimeoutError(f"no output of a record sent after the kill within {timeout_s:g}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000, help="keys of state")
    ap.add_argument("--rounds", type=int, default=2, help="kills of each kind")
    ap.add_argument("--rate", type=int, default=400, help="records per second during the run")
    ap.add_argument("--bootstrap", help="a running broker instead of a fresh embedded one")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = None if a.bootstrap else EmbeddedBroker(data_dir=work / "broker").start()
        bootstrap = a.bootstrap or broker.bootstrap  # type: ignore[union-attr]
        try:
            print(json.dumps(run(a, bootstrap, work, broker)), flush=True)
        finally:
            if broker is not None:
                broker.stop()


def run(a: argparse.Namespace, bootstrap: str, work: Path, broker) -> dict:
    name = f"failover-{int(time.time())}"
    p = chain(name, stages=1)
    cfg = WorkerConfig(bootstrap_servers=bootstrap)
    create_topics(clients.admin(cfg), p)
    t0 = time.monotonic()
    written = write_changelog(SimpleNamespace(cfg=cfg), p, p.changelog_topic("stage1"), a.keys)
    build_s = time.monotonic() - t0
    env = {
        **os.environ,
        "KWHEEL_BENCH_PIPELINE": name,
        "KWHEEL_BENCH_STAGES": "1",
        "PYTHONPATH": str(ROOT),
    }
    n = 0

    def start(state: Path) -> WorkerProcess:
        nonlocal n
        n += 1
        w = WorkerProcess(
            REF, bootstrap, state, work / f"w{n}.log", slot="s0", env=env, new_session=True
        )
        w.cwd = ROOT
        return w.start()

    state = work / "state-first"
    w = start(state)
    feed = Feed(cfg, p, a.keys, a.rate)
    tail = CommittedTail(bootstrap, p.streams["out1"].topic)
    results: dict[str, list[float]] = {"warm_s": [], "cold_s": []}
    try:
        started = time.monotonic()
        wait_until(lambda: len(w.task_events("ready")) >= 4, 600, "the first restore")
        first_ready_s = time.monotonic() - started
        feed.start()
        first_output_after(tail, time.time(), 120)
        kinds = ["warm_s", "cold_s"] * a.rounds
        for i, kind in enumerate(kinds):
            wait_until(lambda: tail.poll(0.05), 60, "outputs flowing")
            w.kill()
            killed = time.time()
            if kind == "cold_s":
                state = work / f"state-cold-{i}"  # a new machine: nothing on disk
            w = start(state)
            seen = first_output_after(tail, killed, 300)
            results[kind].append(round(seen - killed, 2))
            wait_until(lambda w=w: len(w.task_events("ready")) >= 4, 600, "every task ready")
    finally:
        feed.halt.set()
        w.end(30)
        tail.close()
    return {
        "figure": "failover",
        "keys": a.keys,
        "changelog_records": written,
        "changelog_build_s": round(build_s, 1),
        "first_start_to_ready_s": round(first_ready_s, 2),
        "values": {k: v for k, v in results.items()},
        "median": {k: statistics.median(v) for k, v in results.items() if v},
        "unit": "s from SIGKILL to the first committed output of a record sent after it",
        "broker": "external" if broker is None else "embedded",
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }


if __name__ == "__main__":
    main()
