"""The demo: the keyed-count pipeline end to end on the embedded broker.

Starts the broker, creates the topics, runs two worker processes, injects events while
showing progress, then prints the busiest users and checks every count is exact.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter

from kwheel.config import WorkerConfig
from kwheel.kafka.clients import wait_for_broker
from kwheel.kafka.producer import StreamProducer
from kwheel.kafka.topics import create_topics
from kwheel.testing.broker import EmbeddedBroker
from kwheel.testing.readers import CommittedTail

from .keyed_count import pipeline


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--users", type=int, default=500)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kwheel-demo-")
    with EmbeddedBroker(data_dir=f"{work}/broker") as broker:
        print(f"embedded Kafka broker on {broker.bootstrap} (state in {work})")
        cfg = WorkerConfig(bootstrap_servers=broker.bootstrap, state_dir=f"{work}/state")
        created = create_topics(wait_for_broker(cfg), pipeline)
        print(f"created topics: {', '.join(created)}")
        workers = subprocess.Popen(
            [sys.executable, "-m", "kwheel", "worker", "examples.keyed_count:pipeline", "--processes", "2",
             "--slot", "demo", "-b", broker.bootstrap, "--state-dir", cfg.state_dir.as_posix()],
            stderr=open(f"{work}/workers.log", "w"),
        )
        print(f"started 2 worker processes (log: {work}/workers.log)")
        reference: Counter = Counter()
        rng = random.Random(7)
        started = time.monotonic()
        with StreamProducer(pipeline, cfg) as sp:
            for i in range(args.events):
                user = f"user{int(rng.paretovariate(1.1)) % args.users:04d}"  # a few heavy users
                sp.send("events", user, {"user": user, "action": "click" if i % 3 else "view"})
                reference[user] += 1
                if (i + 1) % 10_000 == 0:
                    sp.flush()
                    print(f"  injected {i + 1:>7} events")
        latest: dict[str, int] = {}
        seen = 0
        tail = CommittedTail(broker.bootstrap, pipeline.streams["counts"].topic)
        deadline = time.monotonic() + 300
        while len(latest) < len(reference) or any(latest.get(u) != n for u, n in reference.items()):
            for r in tail.poll(0.5):
                v = json.loads(r.value)
                latest[v["user"]] = max(latest.get(v["user"], 0), v["count"])
                seen += 1
            print(f"  {seen:>7} counts committed, {time.monotonic() - started:5.1f}s")
            if workers.poll() is not None:
                print(f"demo: the workers exited with {workers.returncode}; see {work}/workers.log", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print("demo: timed out waiting for the counts", file=sys.stderr)
                workers.terminate()
                return 1
        tail.close()
        workers.terminate()
        rc = workers.wait(60)
        elapsed = time.monotonic() - started
        print(f"\nall {args.events} events counted exactly once in {elapsed:.1f}s; busiest users:")
        for user, n in sorted(latest.items(), key=lambda kv: (-kv[1], kv[0]))[:5]:
            print(f"  {user}: {n}")
        ok = latest == dict(reference) and rc == 0
        print("counts match the reference" if ok else "MISMATCH against the reference")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
