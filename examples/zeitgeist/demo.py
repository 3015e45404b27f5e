"""The demo: Zeitgeist end to end on the embedded broker.

Starts an embedded Kafka broker, creates the topics, runs two worker processes, injects
two minutes of synthetic query traffic (replayed as fast as it goes) while showing
progress, then prints the anomalies found next to the ones planted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from kwheel import MAX_WATERMARK, MIN_WATERMARK
from kwheel.config import WorkerConfig
from kwheel.injector import run_injector
from kwheel.testing.broker import EmbeddedBroker
from kwheel.testing.readers import CommittedTail, WatermarkTail

from .pipeline import build
from .traffic import Traffic

REF = "examples.zeitgeist.pipeline:pipeline"


def _clock(ms: int) -> str:
    if ms == MIN_WATERMARK:
        return "none yet"
    if ms == MAX_WATERMARK:
        return "end of input"
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=120, help="seconds of traffic to replay")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    traffic = Traffic(seed=args.seed, queries=args.queries, seconds=args.seconds)
    env = {
        "KWHEEL_ZEITGEIST_SEED": str(args.seed),
        "KWHEEL_ZEITGEIST_QUERIES": str(args.queries),
        "KWHEEL_ZEITGEIST_SECONDS": str(args.seconds),
        "KWHEEL_ZEITGEIST_START_MS": str(traffic.start_ms),
    }
    pipeline = build("zeitgeist", traffic)
    work = tempfile.mkdtemp(prefix="kwheel-zeitgeist-")
    with EmbeddedBroker(data_dir=f"{work}/broker") as broker:
        print(f"embedded Kafka broker on {broker.bootstrap} (files in {work})")
        cfg = WorkerConfig(bootstrap_servers=broker.bootstrap, state_dir=f"{work}/state")
        subprocess.run(
            [sys.executable, "-m", "kwheel", "topics", "create", REF, "-b", broker.bootstrap],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, **env},
        )
        print(f"created {len(pipeline.topics())} topics for pipeline 'zeitgeist'")
        log = open(f"{work}/workers.log", "w")
        workers = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kwheel",
                "worker",
                REF,
                "--processes",
                "2",
                "--slot",
                "demo",
                "-b",
                broker.bootstrap,
                "--state-dir",
                f"{work}/state",
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, **env},
        )
        print(f"started 2 worker processes (log: {work}/workers.log)\n")
        watermarks = WatermarkTail(broker.bootstrap, pipeline)
        anomalies_tail = CommittedTail(broker.bootstrap, pipeline.streams["anomalies"].topic)
        anomalies: list[dict] = []
        last_print = [0.0]
        started = time.monotonic()

        def model_watermark() -> int:
            return watermarks.output_watermark("model")

        def show(inj=None, force=False) -> None:
            watermarks.poll(0)
            anomalies.extend(json.loads(r.value) for r in anomalies_tail.poll(0))
            if not force and time.monotonic() - last_print[0] < 1.0:
                return
            last_print[0] = time.monotonic()
            sent = f"{inj.sent:>8} records in" if inj else " " * 19
            print(
                f"  {time.monotonic() - started:5.1f}s {sent}   injector watermark "
                f"{_clock(inj.watermark) if inj else '-':>12}   model watermark {_clock(model_watermark()):>12}"
                f"   anomalies found {len(anomalies):>3}"
            )

        for k, v in env.items():
            os.environ[k] = v
        run_injector(pipeline, "queries", cfg, progress=show)
        deadline = time.monotonic() + 300
        while model_watermark() != MAX_WATERMARK:
            if workers.poll() is not None:
                print(
                    f"the workers exited with {workers.returncode}; see {work}/workers.log",
                    file=sys.stderr,
                )
                return 1
            if time.monotonic() > deadline:
                print("timed out waiting for the pipeline to finish", file=sys.stderr)
                return 1
            show()
            time.sleep(0.2)
        show(force=True)
        workers.terminate()
        rc = workers.wait(60)
        watermarks.close()
        anomalies_tail.close()

    _, planted = traffic.plan()
    print(f"\n{len(anomalies)} anomalous windows found in {time.monotonic() - started:.1f}s:\n")
    print(
        f"  {'query':<12} {'kind':<6} {'window':<9} {'count':>6} {'expected':>9} {'magnitude':>10}"
    )
    for a in sorted(anomalies, key=lambda a: (a["start"], a["query"])):
        print(
            f"  {a['query']:<12} {a['kind']:<6} {_clock(a['start']):<9} {a['count']:>6} {a['expected']:>9} "
            f"{a['magnitude'] if a['magnitude'] is not None else '-':>10}"
        )
    found = {(a["query"], a["kind"], a["start"]) for a in anomalies}
    hits = [p for p in planted if all((p.query, p.kind, s) in found for s in p.window_starts)]
    planted_windows = {(p.query, p.kind, s) for p in planted for s in p.window_starts}
    extra = found - planted_windows
    print(
        f"\nplanted: {len(planted)} anomalies ({sum(p.kind == 'spike' for p in planted)} spikes, "
        f"{sum(p.kind == 'dip' for p in planted)} dips); found all windows of {len(hits)}; "
        f"{len(extra)} other windows flagged"
    )
    return 0 if len(hits) == len(planted) and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
