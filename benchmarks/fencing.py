"""Fencing the earlier owners of four tasks, one after another and all at once (as the
runner opens the tasks of an assignment): seconds per round on a fresh embedded broker.
Each round is a new incarnation, so it fences the ids of the ones before. Prints one
JSON object.

    .venv/bin/python -m benchmarks.fencing [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from confluent_kafka import Consumer

from benchmarks.pipelines import keyed_count
from kwheel.config import WorkerConfig
from kwheel.kafka import clients
from kwheel.kafka.topics import create_topics
from kwheel.runtime.runner import FENCE_BACK
from kwheel.runtime.task import Task
from kwheel.testing.broker import EmbeddedBroker

TASKS = 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each kind")
    a = ap.parse_args()
    took: dict[str, list[float]] = {"one_after_another_s": [], "together_s": []}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(data_dir=Path(tmp) / "b") as b:
        p = keyed_count("fencing")
        cfg = WorkerConfig(bootstrap_servers=b.bootstrap, state_dir=Path(tmp) / "s")
        create_topics(clients.admin(cfg), p)
        group = Consumer(clients.group_consumer_config(cfg, p.group_id("counter"), None))
        kinds = ["warm-up"] + ["one_after_another_s", "together_s"] * a.rounds
        for incarnation, kind in enumerate(kinds, start=1):
            tasks = [Task(p, p.computations["counter"], q, cfg, group) for q in range(TASKS)]

            def fence(task: Task, incarnation: int = incarnation) -> None:
                task.fence(incarnation, max(0, incarnation - FENCE_BACK))

            started = time.perf_counter()
            if kind == "together_s":
                with ThreadPoolExecutor(TASKS) as pool:
                    list(pool.map(fence, tasks))
            else:
                for task in tasks:
                    fence(task)
            if kind in took:
                took[kind].append(round(time.perf_counter() - started, 3))
            for task in tasks:
                task.close()
        group.close()
    print(
        json.dumps(
            {
                "figure": "fencing",
                "tasks": TASKS,
                **took,
                **{k.replace("_s", "_median_s"): statistics.median(v) for k, v in took.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
