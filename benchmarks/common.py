"""What the benchmark figures share: the run's context (``Bench``: broker, work directory,
names, processes, JSON output), the pre-loaded data, polling committed offsets, and small
helpers. Processes, the broker and readers come from the test kit (``kwheel.testing``)."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from kwheel.config import WorkerConfig
from kwheel.kafka import clients
from kwheel.kafka.topics import create_topics
from kwheel.kafka.writer import StreamProducer
from kwheel.testing.processes import Process, WorkerProcess, wait_until
from kwheel.testing.readers import CommittedOffsets

from . import pipelines

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = pipelines.PARTITIONS
POLL_S = 0.05  # committed-offset polling period
MIN_WINDOW_S = 2.0  # a shorter processing window is dominated by commit and polling granularity


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def tail(p: Process | None, lines: int = 15) -> str:
    """``; last lines of <log>: ...`` for error messages."""
    if p is None or not p.log_path.exists():
        return ""
    return f"; last lines of {p.log_path}:\n  " + p.tail(lines).replace("\n", "\n  ")


def wait_for(
    pred: Callable[[], object],
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
    alive: Process | None = None,
) -> object:
    """Poll ``pred`` until truthy; BenchError on timeout or when ``alive`` exits first."""

    def check() -> object:
        v = pred()
        if not v and alive is not None and not alive.alive():
            raise BenchError(
                f"process exited with {alive.returncode} while waiting for {what}{tail(alive)}"
            )
        return v

    try:
        return wait_until(check, timeout_s, what, interval_s)
    except TimeoutError:
        raise BenchError(
            f"timed out after {timeout_s:g}s waiting for {what}{tail(alive)}"
        ) from None


def percentiles(xs: list[float], ps=(50, 95, 99)) -> dict[str, float]:
    s = sorted(xs)
    out = {}
    for p in ps:
        i = min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))  # nearest rank
        out[f"p{p}"] = round(s[i], 1)
    return out


def last_json(path: Path) -> dict | None:
    """The last line of ``path`` that is a JSON object (what a program printed last)."""
    for line in reversed(path.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


class ZipfKeys:
    """``keys`` keys; rank r drawn with weight 1/r^s; which key has which rank is shuffled."""

    def __init__(self, keys: int, s: float, seed: int):
        self.rng = random.Random(seed)
        names = [f"k{i:05d}" for i in range(keys)]
        self.rng.shuffle(names)
        self.names = names
        cum, total = [], 0.0
        for r in range(1, keys + 1):
            total += 1.0 / r**s
            cum.append(total)
        self.cum = cum
        self.total = total

    def draw(self, n: int) -> list[str]:
        return self.rng.choices(self.names, cum_weights=self.cum, k=n)


class Bench:
    """One benchmark run: its broker, work directory, names, the processes it started (all
    stopped by ``stop_all``), what it measured of memory, and its JSON output."""

    def __init__(self, args: argparse.Namespace, bootstrap: str, broker: str, work: Path):
        self.args = args
        self.bootstrap = bootstrap
        self.broker = broker
        self.work = work
        self.started: list[Process] = []
        self.cfg = WorkerConfig.from_env(bootstrap_servers=bootstrap)
        self.run_id = f"bench-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.memory: dict[str, dict] = {}  # run label -> peak RSS (benchmarks/memory.py)
        self.input_topic: str | None = None
        self.data_info: dict = {}
        self.keys = ZipfKeys(args.keys, args.zipf_s, args.seed)
        self.worker_settings = {
            k: v
            for k, v in os.environ.items()
            if k.startswith("KWHEEL_") and not k.startswith("KWHEEL_BENCH")
        }
        if args.batch_size:
            self.worker_settings["KWHEEL_BATCH_SIZE"] = str(args.batch_size)
        if args.commit_interval_ms:
            self.worker_settings["KWHEEL_COMMIT_INTERVAL_MS"] = str(args.commit_interval_ms)

    # ---- output ------------------------------------------------------------------------
    def emit(
        self, figure: str, values: object, unit: str, records: int | None, **extra: object
    ) -> None:
        obj = {
            "figure": figure,
            **extra,
            "values": values,
            "unit": unit,
            "records": records,
            "broker": self.broker,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        }
        if self.worker_settings:
            obj["worker_settings"] = self.worker_settings
        print(json.dumps(obj), flush=True)

    # ---- processes ---------------------------------------------------------------------
    def start(self, p: Process) -> Process:
        """Start ``p`` (its own session: ``end()`` kills its children too); ``stop_all``
        ends it if it is still running then."""
        p.new_session = True
        p.cwd = ROOT
        self.started.append(p)
        return p.start()

    def start_process(self, label: str, args: list[str], env: dict[str, str] | None = None):
        return self.start(Process(args, self.work / f"{label}.log", env=env))

    def start_worker(
        self, ref: str, pipeline: str, label: str, processes: int = 1, **bench: str
    ) -> WorkerProcess:
        """``kwheel worker ref`` with its own state directory and slot ``label``; its log is
        ``<label>.log`` and its tasks' stats ``<label>.stats.jsonl`` in the work directory."""
        w = WorkerProcess(
            ref,
            self.bootstrap,
            self.work / f"state-{label}",
            self.work / f"{label}.log",
            slot=label,
            extra_args=["--processes", str(processes)] if processes > 1 else None,
        )
        w.env = self.worker_env(pipeline, **bench)
        self.start(w)
        return w

    def worker_env(self, pipeline: str, **bench: str) -> dict[str, str]:
        """The worker's whole environment: this one without ``KWHEEL_BENCH*``, plus the
        worker settings and this run's ``KWHEEL_BENCH*``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KWHEEL_BENCH")}
        env.update(self.worker_settings)
        env["KWHEEL_BENCH_PIPELINE"] = pipeline
        env.update(bench)
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
        return env

    def stop_worker(self, w: WorkerProcess) -> None:
        rc = w.end(self.args.stop_timeout)
        if rc not in (0, None):
            log(f"worker exited with {rc}{tail(w, 5)}")

    def stop_all(self) -> None:
        for p in reversed(self.started):
            if p.alive():
                log(f"stopping leftover {p.log_path.stem} (pid {p.pid})")
            p.end(20.0)

    # ---- topics and offsets ------------------------------------------------------------
    def broker_alive(self) -> bool:
        try:
            clients.admin(self.cfg).list_topics(timeout=10)
            return True
        except KafkaException:
            return False

    def name(self, what: str) -> str:
        return f"{self.run_id}-{what}"

    def create_input_topic(self, topic: str) -> None:
        admin = clients.wait_for_broker(self.cfg)
        fut = admin.create_topics(
            [NewTopic(topic, PARTITIONS, self.args.replication)], operation_timeout=10
        )[topic]
        try:
            fut.result()
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        wait_for(lambda: topic in admin.list_topics(timeout=5).topics, 10, f"topic {topic}")

    def setup_topics(self, pipeline) -> None:
        create_topics(clients.wait_for_broker(self.cfg), pipeline, self.args.replication)

    def end_offsets(self, topic: str) -> list[int]:
        with CommittedOffsets(self.bootstrap, "kwheel-bench-offsets") as c:
            return c.ends(topic, PARTITIONS)

    def measure_commits(
        self,
        group: str,
        topic: str,
        n: int,
        started: float,
        proc: Process,
        on_first: Callable[[], object] | None = None,
    ) -> dict:
        """Poll the group's committed offsets until all ``n`` input records are committed.

        processing-only: records committed between the first observed commit and the last,
        over that time (startup, group join, restore and the first batch are excluded).
        end-to-end: ``n`` over the time from starting the process to all committed."""
        with CommittedOffsets(self.bootstrap, group) as c:
            first = None
            deadline = started + self.args.phase_timeout
            total = 0
            while True:
                total = c.total(topic, PARTITIONS)
                now = time.monotonic()
                if total > 0 and first is None:
                    first = (now, total)
                    if on_first:
                        on_first()
                if total >= n:
                    break
                if not proc.alive():
                    raise BenchError(
                        f"worker exited with {proc.returncode} after committing {total} of {n}{tail(proc)}"
                    )
                if now > deadline:
                    raise BenchError(
                        f"{group}: committed {total} of {n} within {self.args.phase_timeout:g}s{tail(proc)}"
                    )
                time.sleep(POLL_S)
            t1, t0, c0 = time.monotonic(), first[0], first[1]
            proc_rps = (n - c0) / (t1 - t0) if t1 > t0 and n > c0 else None
            if t1 - t0 < MIN_WINDOW_S:
                log(
                    f"{group}: processing window only {t1 - t0:.2f}s: processing_rps is rough (use more --records)"
                )
            return {
                "processing_rps": None if proc_rps is None else round(proc_rps),
                "end_to_end_rps": round(n / (t1 - started)),
                "processing_window_s": round(t1 - t0, 2),
                "processing_window_records": n - c0,
                "first_commit_after_s": round(t0 - started, 2),
                "end_to_end_s": round(t1 - started, 2),
            }

    # ---- the data ------------------------------------------------------------------------
    def preload(self) -> None:
        """``--records`` records over ``--keys`` Zipf-like keys into one 4-partition topic
        every throughput run reads, loaded through a StreamProducer (records carry ids)."""
        n = self.args.records
        self.input_topic = f"{self.run_id}.input"
        self.create_input_topic(self.input_topic)
        pipeline = pipelines.keyed_count(self.name("load"), self.input_topic)
        keys = self.keys.draw(n)
        base = int(time.time() * 1000) - n
        rng = random.Random(self.args.seed + 1)
        t0 = time.monotonic()
        sizes = 0
        with StreamProducer(pipeline, self.cfg) as sp:
            for i, k in enumerate(keys):
                ts = base + i + rng.randrange(100)  # event time: ~1 ms apart, a little disorder
                value = {"user": k, "ts": ts, "seq": i, "v": f"{i & 0xFFFF:04x}"}
                if i < 1000:
                    sizes += len(orjson.dumps(value))
                sp.send("events", k, value, ts)
        per_part = self.end_offsets(self.input_topic)
        if sum(per_part) != n:
            raise BenchError(
                f"pre-load: topic {self.input_topic} holds {sum(per_part)} records, expected {n}"
            )
        c = Counter(keys)
        self.data_info = {
            "records": n,
            "keys_drawn": len(c),
            "top_key_share": round(c.most_common(1)[0][1] / n, 3),
            "records_per_partition": per_part,
            "value_bytes_avg": round(sizes / min(n, 1000), 1),
            "zipf_s": self.args.zipf_s,
        }
        log(
            f"pre-loaded {n} records into {self.input_topic} in {time.monotonic() - t0:.1f}s: {self.data_info}"
        )


def rates(r: dict) -> dict:
    return {"processing_rps": r["processing_rps"], "end_to_end_rps": r["end_to_end_rps"]}
