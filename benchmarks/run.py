"""Run kwheel's benchmarks and print one JSON object per line per figure.

    .venv/bin/python -m benchmarks.run [--bootstrap HOST:PORT] [--records N] [--only FIGURE ...] [--profile]

Without ``--bootstrap`` an embedded broker (noida-db) is started on a free loopback port
and stopped at the end. Figures (docs/performance.md says what each measures and how):

    throughput   exactly-once keyed count, 1 and 2 worker processes: processing-only and end-to-end records/s
    ceiling      a plain confluent-kafka transactional loop on the same data, and kwheel / plain
    latency      2,000 records/s for 20 s: output-visible minus send time, 1 and 3 stages
    watermark    wall clock minus low watermark per stage of the 3-stage pipeline
    restore      a fresh worker restoring 1,000,000 keys from a changelog
    memory       peak RSS (VmHWM) of the worker process(es) in every run above

JSON goes to stdout, progress to stderr. Every wait is bounded, and every process started
here (broker, workers, plain loop, py-spy) is stopped on the way out, also on failure.
Worker settings come from the usual ``KWHEEL_*`` environment (inherited by the workers),
or ``--batch-size`` / ``--commit-interval-ms``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from benchmarks.plain import peak_rss_kib
from kwheel.config import WorkerConfig
from kwheel.errors import KwheelError
from kwheel.ids import new_id
from kwheel.injector import Injector
from kwheel.kafka import clients
from kwheel.kafka.partitioner import partition_for
from kwheel.kafka.topics import create_topics
from kwheel.kafka.writer import StreamProducer
from kwheel.state import layout
from kwheel.watermarks import MAX_WATERMARK, MIN_WATERMARK
from kwheel.watermarks.control import task_producer_id
from kwheel.watermarks.transport import WatermarkReader
from kwheel.watermarks.upstream import WatermarkTable

from . import pipelines

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("throughput", "ceiling", "latency", "watermark", "restore", "memory")
PARTITIONS = pipelines.PARTITIONS
POLL_S = 0.05  # committed-offset polling period
MIN_WINDOW_S = 2.0  # a shorter processing window is dominated by commit and polling granularity


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---- processes ---------------------------------------------------------------------------
class Processes:
    """Every subprocess started here, each in its own session (so a stuck one and its
    children can be killed by its group id); ``stop_all`` ends those still running."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(
        self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        with open(log_path, "ab") as out:
            out.write(f"=== {name}: {' '.join(args)}\n".encode())
            out.flush()
            p = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
        self.procs.append((name, p))
        return p

    def stop(
        self, p: subprocess.Popen, timeout_s: float = 60.0, sig: int = signal.SIGTERM
    ) -> int | None:
        """Signal, wait up to ``timeout_s``, then SIGKILL the process's group."""
        if p.poll() is None:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log(f"pid {p.pid} did not stop within {timeout_s:g}s: SIGKILL to its process group")
        # children of a supervisor (--processes N) share its group: kill leftovers too
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass
        return p.returncode

    def stop_all(self) -> None:
        for name, p in reversed(self.procs):
            if p.poll() is None:
                log(f"stopping leftover {name} (pid {p.pid})")
            self.stop(p, 20.0)


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        for d in os.listdir("/proc"):  # kernels without .../children: scan parent pids
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            out.append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
    return sorted(set(out))


def wait_for(
    pred,
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
    alive: subprocess.Popen | None = None,
    log_path: Path | None = None,
):
    """Poll ``pred`` until truthy; BenchError on timeout or when ``alive`` exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v:
            return v
        if alive is not None and alive.poll() is not None:
            raise BenchError(
                f"process exited with {alive.returncode} while waiting for {what}{_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:g}s waiting for {what}{_tail(log_path)}")
        time.sleep(interval_s)


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {path}:\n  " + "\n  ".join(text)


def percentiles(xs: list[float], ps=(50, 95, 99)) -> dict[str, float]:
    s = sorted(xs)
    out = {}
    for p in ps:
        i = min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))  # nearest rank
        out[f"p{p}"] = round(s[i], 1)
    return out


# ---- data ---------------------------------------------------------------------------------
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


# ---- the benchmark --------------------------------------------------------------------------
class Bench:
    def __init__(
        self, args: argparse.Namespace, bootstrap: str, broker: str, work: Path, procs: Processes
    ):
        self.args = args
        self.bootstrap = bootstrap
        self.broker = broker
        self.work = work
        self.procs = procs
        self.cfg = WorkerConfig.from_env(bootstrap_servers=bootstrap)
        self.run_id = f"bench-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.memory: dict[str, dict] = {}
        self.results: dict[str, dict] = {}
        self.input_topic: str | None = None
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

    # ---- helpers -----------------------------------------------------------------------
    def broker_alive(self) -> bool:
        try:
            clients.admin(self.cfg).list_topics(timeout=10)
            return True
        except KafkaException:
            return False

    def name(self, what: str) -> str:
        return f"{self.run_id}-{what}"

    def worker_env(self, pipeline: str, **bench: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KWHEEL_BENCH")}
        env.update(self.worker_settings)
        env["KWHEEL_BENCH_PIPELINE"] = pipeline
        env.update(bench)
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
        return env

    def start_worker(self, ref: str, pipeline: str, label: str, processes: int = 1, **bench: str):
        log_path = self.work / f"{label}.log"
        args = [
            sys.executable,
            "-m",
            "kwheel",
            "worker",
            ref,
            "--bootstrap-servers",
            self.bootstrap,
            "--state-dir",
            str(self.work / f"state-{label}"),
            "--slot",
            label,
        ]
        if processes > 1:
            args += ["--processes", str(processes)]
        return self.procs.start(
            f"worker {label}", args, log_path, self.worker_env(pipeline, **bench)
        ), log_path

    def worker_rss(self, p: subprocess.Popen, processes: int, label: str) -> dict:
        """Peak RSS of the worker process(es), read just before stopping them."""
        pids = child_pids(p.pid) if processes > 1 else [p.pid]
        kib = [peak_rss_kib(pid) for pid in pids]
        mib = [round(k / 1024, 1) for k in kib if k is not None]
        entry = {"peak_rss_mib": max(mib) if mib else None, "processes": len(pids)}
        if len(mib) > 1:
            entry["per_process_mib"] = mib
            entry["sum_mib"] = round(sum(mib), 1)
        self.memory[label] = entry
        return entry

    def stop_worker(self, p: subprocess.Popen, log_path: Path) -> str:
        rc = self.procs.stop(p, self.args.stop_timeout)
        if rc not in (0, None):
            log(f"worker exited with {rc}{_tail(log_path, 5)}")
        return log_path.read_text(errors="replace")

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

    def committed_total(self, consumer: Consumer, topic: str) -> int:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)

    def offsets_consumer(self, group: str) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "log_level": 0,
            }
        )

    # ---- data --------------------------------------------------------------------------
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

    def end_offsets(self, topic: str) -> list[int]:
        c = self.offsets_consumer("kwheel-bench-offsets")
        try:
            return [
                c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(PARTITIONS)
            ]
        finally:
            c.close()

    # ---- 1. throughput ---------------------------------------------------------------------
    def measure_commits(
        self,
        group: str,
        topic: str,
        n: int,
        started: float,
        proc: subprocess.Popen,
        log_path: Path,
        on_first=None,
    ) -> dict:
        """Poll the group's committed offsets until all ``n`` input records are committed.

        processing-only: records committed between the first observed commit and the last,
        over that time (startup, group join, restore and the first batch are excluded).
        end-to-end: ``n`` over the time from starting the process to all committed."""
        c = self.offsets_consumer(group)
        try:
            first = None
            deadline = started + self.args.phase_timeout
            total = 0
            while True:
                total = self.committed_total(c, topic)
                now = time.monotonic()
                if total > 0 and first is None:
                    first = (now, total)
                    if on_first:
                        on_first()
                if total >= n:
                    break
                if proc.poll() is not None:
                    raise BenchError(
                        f"worker exited with {proc.returncode} after committing {total} of {n}{_tail(log_path)}"
                    )
                if now > deadline:
                    raise BenchError(
                        f"{group}: committed {total} of {n} within {self.args.phase_timeout:g}s{_tail(log_path)}"
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
        finally:
            c.close()

    def run_throughput(
        self, processes: int, label: str | None = None, profile: bool = False
    ) -> dict:
        n = self.args.records
        label = label or f"throughput-{processes}p"
        name = self.name(label)
        p = pipelines.keyed_count(name, self.input_topic)
        self.setup_topics(p)
        log(f"{label}: keyed count over {n} records, {processes} worker process(es)")
        started = time.monotonic()
        proc, log_path = self.start_worker(
            "benchmarks.pipelines:keyed_count",
            name,
            label,
            processes,
            KWHEEL_BENCH_INPUT=self.input_topic,
        )
        spy: dict = {}
        on_first = (lambda: spy.update(self.start_py_spy(proc.pid, label))) if profile else None
        try:
            r = self.measure_commits(
                p.group_id("counter"), self.input_topic, n, started, proc, log_path, on_first
            )
            if profile:
                spy.update(self.stop_py_spy(spy))
            r["memory"] = self.worker_rss(proc, processes, label)
        finally:
            if spy.get("proc") is not None:
                self.procs.stop(spy["proc"], 10, signal.SIGINT)
            text = self.stop_worker(proc, log_path)
        stats = worker_stats(text)
        r["processed"] = stats.get("processed")
        r["duplicates"] = stats.get("duplicates")
        r["commits"] = stats.get("commits")
        if r["processed"] is not None and r["processed"] < n:
            log(
                f"{label}: workers report {r['processed']} processed of {n} (a task may have restarted)"
            )
        if profile:
            r["profile"] = spy.get("profile")
        log(
            f"{label}: {r['processing_rps']} rec/s processing, {r['end_to_end_rps']} rec/s end to end"
        )
        return r

    # ---- 2. the ceiling --------------------------------------------------------------------
    def run_plain(self) -> dict:
        n = self.args.records
        label = "plain"
        out = f"{self.run_id}.plain.counts"
        self.create_input_topic(out)
        group = f"{self.run_id}.plain"
        log_path = self.work / "plain.log"
        args = [
            sys.executable,
            "-m",
            "benchmarks.plain",
            "--bootstrap",
            self.bootstrap,
            "--input",
            self.input_topic,
            "--output",
            out,
            "--group",
            group,
            "--transactional-id",
            f"{self.run_id}.plain",
            "--expect",
            str(n),
            "--timeout",
            str(self.args.phase_timeout),
        ]
        log(f"plain loop over the same {n} records")
        started = time.monotonic()
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        proc = self.procs.start("plain loop", args, log_path, env)
        try:
            r = self.measure_commits(group, self.input_topic, n, started, proc, log_path)
        except BenchError:
            if proc.poll() is None:
                raise
            r = None  # it may have finished between two polls: its own line says
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        self.procs.stop(proc, 10)
        own = _last_json(log_path)
        if r is None:
            if not own or own.get("committed", 0) < n:
                raise BenchError(f"plain loop failed{_tail(log_path)}")
            r = {"processing_rps": None, "end_to_end_rps": round(n / own["total_s"])}
        if own:
            # The plain loop finishes in a few commit intervals, too short for polling: take
            # the same definition from its own clock (first commit to last), keep the polled one.
            r["own_timing"] = own
            r["polled_processing_rps"] = r["processing_rps"]
            if own.get("processing_rps"):
                r["processing_rps"] = own["processing_rps"]
            if own.get("peak_rss_kib"):
                self.memory[label] = {
                    "peak_rss_mib": round(own["peak_rss_kib"] / 1024, 1),
                    "processes": 1,
                }
                r["memory"] = self.memory[label]
        log(
            f"plain: {r.get('processing_rps')} rec/s processing, {r['end_to_end_rps']} rec/s end to end"
        )
        return r

    # ---- 3 + 4. latency and watermark lag ---------------------------------------------------
    def run_paced(self, stages: int) -> dict:
        """A ``stages``-stage chain fed at a fixed rate by an Injector thread (which also
        publishes the source watermark). A read_committed consumer measures output-visible
        time minus send time; a WatermarkReader samples wall clock minus each stage's low
        watermark every 100 ms."""
        a = self.args
        label = f"latency-{stages}stage"
        name = self.name(label)
        p = pipelines.chain(name, stages)
        self.setup_topics(p)
        log(
            f"{label}: {a.rate} records/s for {a.warmup:g}+{a.duration:g}s through {stages} stage(s)"
        )
        proc, log_path = self.start_worker(
            "benchmarks.pipelines:chain", name, label, 1, KWHEEL_BENCH_STAGES=str(stages)
        )
        stop = threading.Event()
        threads: list[threading.Thread] = []
        try:
            need = PARTITIONS * stages
            wait_for(
                lambda: log_path.read_text(errors="replace").count("assigned and ready") >= need,
                a.phase_timeout,
                f"{need} tasks of {label} ready",
                0.2,
                proc,
                log_path,
            )
            reader = LatencyReader(self.bootstrap, p.streams[f"out{stages}"].topic, stop)
            sampler = WatermarkSampler(
                self.cfg, p, [f"stage{i}" for i in range(1, stages + 1)], "injector:bench/0", stop
            )
            threads = [
                threading.Thread(target=reader.run, daemon=True),
                threading.Thread(target=sampler.run, daemon=True),
            ]
            for t in threads:
                t.start()
            wait_for(
                lambda: reader.ready and sampler.ready, 30, "latency reader and watermark sampler"
            )
            feeder = PacedInjector(p, self.cfg, self.keys, a.rate, a.warmup, a.duration, stop)
            ft = threading.Thread(target=feeder.run, daemon=True)
            threads.append(ft)
            ft.start()
            ft.join(a.warmup + a.duration + 60)
            if ft.is_alive() or feeder.error:
                raise BenchError(f"{label}: injector failed: {feeder.error or 'did not finish'}")
            measured = feeder.measured
            t_end = time.monotonic()
            wait_for(
                lambda: (
                    reader.count_since(feeder.measure_from) >= measured
                    or time.monotonic() - t_end > a.drain_timeout
                ),
                a.drain_timeout + 5,
                "outputs of the measured records",
            )
            mem = self.worker_rss(proc, 1, label)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            text = self.stop_worker(proc, log_path)
        lat = reader.latencies_since(feeder.measure_from)
        if not lat:
            raise BenchError(f"{label}: no output of a measured record was seen")
        r = {
            "stages": stages,
            "rate": a.rate,
            "duration_s": a.duration,
            "sent": measured,
            "seen": len(lat),
            "p50_by_5s": reader.p50_by_interval(feeder.measure_from, a.rate * 5),
            "latency_ms": {
                **percentiles(lat),
                "mean": round(statistics.fmean(lat), 1),
                "max": round(max(lat), 1),
            },
            "actual_rate": round(feeder.actual_rate),
            "memory": mem,
        }
        stats = worker_stats(text)
        r["commits"] = stats.get("commits")
        wm = sampler.lags(feeder.measure_from_wall, feeder.measure_to_wall)
        r["watermark_lag_ms"] = wm
        r["watermark_samples"] = sampler.samples_in(
            feeder.measure_from_wall, feeder.measure_to_wall
        )
        log(
            f"{label}: latency {r['latency_ms']} over {len(lat)} of {measured} records; watermark lag {wm}"
        )
        return r

    # ---- 5. restore ------------------------------------------------------------------------
    def run_restore(self) -> dict:
        """Write a keyed count's changelog for ``--restore-keys`` keys straight into its
        topic (the store layout, as the worker would have written it), then time a fresh
        worker restoring it."""
        k = self.args.restore_keys
        label = "restore"
        name = self.name(label)
        p = pipelines.keyed_count(name)
        self.setup_topics(p)
        topic = p.changelog_topic("counter")
        t0 = time.monotonic()
        written = self.write_changelog(p, topic, k)
        build_s = time.monotonic() - t0
        log(f"restore: wrote {written} changelog records ({k} keys) to {topic} in {build_s:.1f}s")
        started = time.monotonic()
        proc, log_path = self.start_worker("benchmarks.pipelines:keyed_count", name, label)
        try:
            wait_for(
                lambda: (
                    log_path.read_text(errors="replace").count("assigned and ready") >= PARTITIONS
                ),
                self.args.phase_timeout,
                "restored tasks ready",
                0.1,
                proc,
                log_path,
            )
            ready_s = time.monotonic() - started
            mem = self.worker_rss(proc, 1, label)
        finally:
            text = self.stop_worker(proc, log_path)
        found = [
            (int(m.group(1)), float(m.group(2)))
            for m in re.finditer(r"restored (\d+) changelog records in ([\d.]+)\s*s", text)
        ]
        n, secs = sum(x for x, _ in found), sum(s for _, s in found)
        if n < written:
            raise BenchError(
                f"restore: the worker logged {n} restored records of {written}{_tail(log_path)}"
            )
        r = {
            "keys": k,
            "changelog_records": n,
            "restore_s": round(secs, 2),
            "records_per_s": round(n / secs) if secs > 0 else None,
            "keys_per_s": round(k / secs) if secs > 0 else None,
            "tasks": len(found),
            "per_task_s": [s for _, s in found],
            "worker_start_to_ready_s": round(ready_s, 2),
            "changelog_build_s": round(build_s, 1),
            "memory": mem,
        }
        log(
            f"restore: {n} records in {secs:.2f}s ({r['records_per_s']} rec/s); ready after {ready_s:.1f}s"
        )
        return r

    def write_changelog(self, pipeline, topic: str, keys: int) -> int:
        """What running the keyed count over ``keys`` distinct keys in batches of 5000 per
        task leaves in its changelog: per key its state ``{"count": 1}``, and per batch one
        record of the batch's input ids. Committed in transactions (restore reads
        read_committed). Keys go to the partition their records would hash to."""
        conf = clients.base_config(self.cfg)
        conf.update(
            {
                "transactional.id": f"{pipeline.name}.bench-writer",
                "enable.idempotence": True,
                "linger.ms": 20,
                "batch.num.messages": 10000,
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
            }
        )
        prod = Producer(conf)
        prod.init_transactions(30)
        state = layout.encode_state({"count": 1})
        per_part: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
        for i in range(keys):
            key = f"r{i:07d}"
            per_part[partition_for(key.encode(), PARTITIONS)].append(layout.state_key(key))
        batch = 5000
        written = in_txn = 0
        ts = int(time.time() * 1000)
        prod.begin_transaction()
        for part, skeys in enumerate(per_part):
            for b, start in enumerate(range(0, len(skeys), batch)):
                chunk = skeys[start : start + batch]
                for sk in chunk:
                    _produce(prod, topic, sk, state, part)
                _produce(
                    prod,
                    topic,
                    layout.id_batch_key(b),
                    layout.encode_id_batch({new_id(): ts for _ in chunk}),
                    part,
                )
                written += len(chunk) + 1
                in_txn += len(chunk) + 1
                if in_txn >= 100_000:
                    prod.commit_transaction(60)
                    prod.begin_transaction()
                    in_txn = 0
        prod.commit_transaction(60)
        left = prod.flush(30)
        if left:
            raise BenchError(f"restore: {left} changelog records not delivered")
        return written

    # ---- profile -----------------------------------------------------------------------------
    def start_py_spy(self, pid: int, label: str) -> dict:
        exe = Path(sys.executable).with_name("py-spy")
        if not exe.exists():
            exe = Path(shutil.which("py-spy") or "py-spy")
        out = self.work / f"{label}.pyspy.txt"
        args = [
            str(exe),
            "record",
            "-p",
            str(pid),
            "-f",
            "raw",
            "-o",
            str(out),
            "-r",
            str(self.args.profile_rate),
            "--nonblocking",
        ]
        log(f"py-spy attached to worker pid {pid}")
        return {
            "proc": self.procs.start("py-spy", args, self.work / f"{label}.pyspy.log"),
            "out": out,
        }

    def stop_py_spy(self, spy: dict) -> dict:
        p = spy["proc"]
        self.procs.stop(p, 30, signal.SIGINT)  # SIGINT: py-spy writes what it sampled
        spy["proc"] = None
        out = spy["out"]
        if not out.exists() or out.stat().st_size == 0:
            return {
                "profile": {
                    "error": f"py-spy took no samples (a short run can end before it starts sampling: use more --records){_tail(self.work / (out.name[:-10] + '.pyspy.log'))}"
                }
            }
        return {"profile": summarise_profile(out, self.args.profile_top)}


# ---- threads of the paced runs ------------------------------------------------------------------
class PacedInjector:
    """Sends ``rate`` records/s (warm-up, then the measured period) through a kwheel
    Injector, which also publishes the stream's low watermark every 200 ms. Each value
    carries its send wall time."""

    def __init__(
        self,
        pipeline,
        cfg: WorkerConfig,
        keys: ZipfKeys,
        rate: int,
        warmup: float,
        duration: float,
        stop: threading.Event,
    ):
        self.pipeline, self.cfg, self.keys, self.rate = pipeline, cfg, keys, rate
        self.warmup, self.duration, self.stop = warmup, duration, stop
        self.error: str | None = None
        self.measure_from = 0  # first measured seq
        self.measured = 0
        self.measure_from_wall = self.measure_to_wall = 0.0
        self.actual_rate = 0.0

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"

    def _run(self) -> None:
        warm = int(self.rate * self.warmup)
        total = warm + int(self.rate * self.duration)
        self.measure_from = warm
        keys = self.keys.draw(total)
        inj = Injector(
            self.pipeline, "bench", ["events"], self.cfg, instance="0", publish_interval_ms=200
        )
        try:
            t0 = time.monotonic()
            last_ts = 0
            for i, k in enumerate(keys):
                if self.stop.is_set():
                    raise BenchError("stopped")
                due = t0 + i / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                now = time.time()
                ts = max(last_ts, int(now * 1000))
                last_ts = ts
                if i == warm:
                    self.measure_from_wall = now
                    t_measure = time.monotonic()
                inj.send("events", k, {"user": k, "ts": ts, "seq": i, "sent": now}, ts)
                inj.advance(ts)  # records are sent in timestamp order: no disorder to allow for
            self.measure_to_wall = time.time()
            self.measured = total - warm
            self.actual_rate = self.measured / max(1e-9, time.monotonic() - t_measure)
        finally:
            inj.close(final=False)


class LatencyReader:
    """A read_committed consumer of the last stage's output: visible time minus send time."""

    def __init__(self, bootstrap: str, topic: str, stop: threading.Event):
        self.topic, self.stop = topic, stop
        self.c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "kwheel-bench-latency",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 5,
                "log_level": 3,
            }
        )
        self.c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        self.seen: dict[int, float] = {}  # seq -> latency ms (first sighting)
        self.ready = False

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                msgs = self.c.consume(1000, 0.05)
                now = time.time()
                self.ready = True
                for m in msgs:
                    if m.error() is None:
                        v = orjson.loads(m.value())
                        self.seen.setdefault(v["seq"], (now - v["sent"]) * 1000)
        finally:
            self.c.close()

    def count_since(self, seq: int) -> int:
        return sum(1 for s in list(self.seen) if s >= seq)

    def p50_by_interval(self, seq: int, per: int) -> list[float]:
        """Median latency of each ``per`` consecutive measured records: a rising series
        means the pipeline did not keep up with the rate (a growing backlog)."""
        items = sorted((s, lat) for s, lat in list(self.seen.items()) if s >= seq)
        chunks = [items[i : i + per] for i in range(0, len(items), max(1, per))]
        return [round(statistics.median(lat for _, lat in c), 1) for c in chunks if c]

    def latencies_since(self, seq: int) -> list[float]:
        return [lat for s, lat in list(self.seen.items()) if s >= seq]


class WatermarkSampler:
    """Follows the watermark topic; every 100 ms records, per stage, wall clock minus the
    stage's low watermark (the min over its tasks' latest published watermarks)."""

    def __init__(
        self, cfg: WorkerConfig, pipeline, stages: list[str], injector: str, stop: threading.Event
    ):
        self.table = WatermarkTable()
        self.reader = WatermarkReader(cfg, pipeline.watermark_topic(), self.table)
        self.stages, self.injector, self.stop = stages, injector, stop
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.ready = False

    def run(self) -> None:
        try:
            next_at = time.monotonic()
            while not self.stop.is_set():
                self.reader.poll(0.02)
                self.ready = True
                if time.monotonic() < next_at:
                    continue
                next_at += 0.1
                now = time.time()
                lags = {}
                for name in ["injector", *self.stages]:
                    w = self._watermark(name)
                    if w is not None:
                        lags[name] = now * 1000 - w
                self.samples.append((now, lags))
        finally:
            self.reader.close()

    def _watermark(self, stage: str) -> int | None:
        pids = (
            [self.injector]
            if stage == "injector"
            else [task_producer_id(stage, p) for p in range(PARTITIONS)]
        )
        ws = []
        for pid in pids:
            c = self.table.latest(pid)
            if c is None or c.watermark in (MIN_WATERMARK, MAX_WATERMARK):
                return None
            ws.append(c.watermark)
        return min(ws)

    def samples_in(self, t0: float, t1: float) -> int:
        return sum(1 for t, _ in self.samples if t0 <= t <= t1)

    def lags(self, t0: float, t1: float) -> dict[str, dict | None]:
        out: dict[str, dict | None] = {}
        window = [lags for t, lags in self.samples if t0 <= t <= t1]
        for name in ["injector", *self.stages]:
            xs = [lags[name] for lags in window if name in lags]
            if not xs:
                out[name] = None
                continue
            out[name] = {
                "p50": percentiles(xs, (50,))["p50"],
                "p95": percentiles(xs, (95,))["p95"],
                "max": round(max(xs), 1),
                "samples": len(xs),
                "missing": len(window) - len(xs),
            }
        return out


# ---- small helpers ---------------------------------------------------------------------------
def _produce(prod: Producer, topic: str, key: bytes, value: bytes, partition: int) -> None:
    while True:
        try:
            prod.produce(topic, value, key, partition=partition)
            return
        except BufferError:
            prod.poll(0.05)


def worker_stats(log_text: str) -> dict[str, int]:
    """Sum of the counters every task logged when it closed."""
    total: Counter = Counter()
    for m in re.finditer(r"\S+\[\d+\]: closed (\{.*\})", log_text):
        total.update(json.loads(m.group(1)))
    return dict(total)


def _last_json(path: Path) -> dict | None:
    for line in reversed(path.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def summarise_profile(path: Path, top: int) -> dict:
    """Top functions by self time (the leaf of each sampled stack) and by inclusive time,
    from py-spy's raw (collapsed stacks) output."""
    selfc: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if f is not None]
        if not frames:
            continue
        total += n
        selfc[frames[-1]] += n
        for f in set(frames):
            incl[f] += n

    def rows(c: Counter) -> list[dict]:
        return [
            {"function": f, "samples": s, "percent": round(100 * s / total, 1)}
            for f, s in c.most_common(top)
        ]

    # the trunk every sample passes through (runpy, the CLI, Worker.run) says nothing
    for f in [f for f, s in incl.items() if s >= 0.99 * total]:
        del incl[f]
    return {
        "samples": total,
        "top_self": rows(selfc),
        "top_inclusive": rows(incl),
        "note": "self time of a Python function includes the C calls it makes (librdkafka, orjson, RocksDB, pickle)",
    }


def _frame_name(frame: str) -> str | None:
    frame = frame.strip()
    if frame.startswith(("process ", "thread ")):
        return None  # py-spy's process/thread pseudo-frames
    m = FRAME.match(frame)
    if not m:
        return frame
    f = m.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in f:
            f = f.split(marker, 1)[1]
            break
    else:
        try:
            f = str(Path(f).resolve().relative_to(ROOT))
        except (ValueError, OSError):
            pass
    return f"{m.group('func')} ({f})"


# ---- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description="kwheel benchmarks: one JSON line per figure."
    )
    ap.add_argument(
        "--bootstrap", help="use this Kafka (host:port) instead of starting the embedded broker"
    )
    ap.add_argument(
        "--records",
        type=int,
        default=200_000,
        help="records pre-loaded for throughput and ceiling (200000)",
    )
    ap.add_argument(
        "--keys", type=int, default=10_000, help="distinct keys of the pre-loaded data (10000)"
    )
    ap.add_argument(
        "--zipf-s", type=float, default=1.0, help="Zipf exponent of the key distribution (1.0)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--only",
        nargs="+",
        choices=FIGURES,
        metavar="FIGURE",
        help=f"run only these: {', '.join(FIGURES)}",
    )
    ap.add_argument(
        "--rate", type=int, default=2000, help="records/s of the latency and watermark runs (2000)"
    )
    ap.add_argument(
        "--duration", type=float, default=20.0, help="measured seconds of the paced runs (20)"
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds sent before measuring in the paced runs (2)",
    )
    ap.add_argument(
        "--restore-keys",
        type=int,
        default=1_000_000,
        help="keys in the restored changelog (1000000)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="an extra one-process throughput run under py-spy: top functions",
    )
    ap.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s (100)")
    ap.add_argument("--profile-top", type=int, default=20)
    ap.add_argument(
        "--batch-size",
        type=int,
        help="worker --batch-size (default: the worker's, or KWHEEL_BATCH_SIZE)",
    )
    ap.add_argument(
        "--commit-interval-ms", type=int, help="worker commit interval (default: the worker's)"
    )
    ap.add_argument(
        "--replication", type=int, default=1, help="replication factor of created topics (1)"
    )
    ap.add_argument(
        "--phase-timeout", type=float, default=600.0, help="bound on each run's wait (s)"
    )
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="wait for the last outputs of a paced run (s)",
    )
    ap.add_argument(
        "--stop-timeout",
        type=float,
        default=60.0,
        help="wait for a worker to stop after SIGTERM (s)",
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, stores, profiles)"
    )
    args = ap.parse_args(argv)
    if args.only == ["memory"]:
        ap.error(
            "memory is measured in the other figures' runs: select them too (e.g. --only throughput memory)"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    want = set(args.only or FIGURES)
    if args.profile:
        want.add("profile")

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="kwheel-bench-"))
    procs = Processes()
    broker = None
    ok = False
    try:
        if args.bootstrap:
            bootstrap, broker_desc = args.bootstrap, f"external {args.bootstrap}"
        else:
            from importlib.metadata import version

            from kwheel.testing.broker import EmbeddedBroker

            broker = EmbeddedBroker(data_dir=work / "broker").start()
            bootstrap = broker.bootstrap
            broker_desc = f"embedded noida-db {version('noida-db')}"
            log(f"embedded broker on {bootstrap} (pid {broker.proc.pid})")
        b = Bench(args, bootstrap, broker_desc, work, procs)
        log(f"run {b.run_id}; work directory {work}")
        ok = run_all(b, want)
    except (BenchError, KwheelError, KafkaException, TimeoutError) as e:
        log(f"FAILED: {e}")
        if broker is not None and broker.proc is not None and broker.proc.poll() is not None:
            log(
                f"the embedded broker (pid {broker.proc.pid}) exited with {broker.proc.returncode} during the run: "
                f"stopped from outside? (log: {broker.log_path})"
            )
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
    finally:
        procs.stop_all()
        if broker is not None:
            broker.stop()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"logs kept in {work}")
    sys.exit(0 if ok else 1)


RUN_ERRORS = (BenchError, KwheelError, KafkaException, TimeoutError)


def run_all(b: Bench, want: set[str]) -> bool:
    """Run what the wanted figures need. A failed run prints its figure(s) with an "error"
    and the others go on (unless the broker is gone). True when every run succeeded."""
    n = b.args.records
    failed: list[str] = []

    def attempt(figures: list[str], unit: str, fn):
        try:
            return fn()
        except RUN_ERRORS as e:
            msg = f"{type(e).__name__}: {e}"
            log(f"run for {', '.join(figures)} FAILED: {msg}")
            failed.extend(figures)
            for f in figures:
                b.emit(f, None, unit, n, error=msg.splitlines()[0][:2000])
            if not b.broker_alive():
                raise BenchError("the broker is gone: stopping") from e
            return None

    if want & {"throughput", "ceiling", "profile"}:
        b.preload()  # without the data nothing else of these can run: a failure ends the run
    one = None
    if want & {"throughput", "ceiling"}:
        one = attempt(
            [f for f in ("throughput",) if f in want] or ["ceiling"],
            "records/s",
            lambda: b.run_throughput(1),
        )
        if one and "throughput" in want:
            b.emit(
                "throughput",
                _rates(one),
                "records/s",
                n,
                mode="exactly-once",
                processes=1,
                data=b.data_info,
                detail=one,
            )
    if "throughput" in want:
        two = attempt(["throughput"], "records/s", lambda: b.run_throughput(2))
        if two:
            vals = _rates(two)
            if one and one["processing_rps"] and two["processing_rps"]:
                vals["processing_speedup_vs_1"] = round(
                    two["processing_rps"] / one["processing_rps"], 2
                )
            if one:
                vals["end_to_end_speedup_vs_1"] = round(
                    two["end_to_end_rps"] / one["end_to_end_rps"], 2
                )
            b.emit("throughput", vals, "records/s", n, mode="exactly-once", processes=2, detail=two)
    if "ceiling" in want:
        plain = attempt(["ceiling"], "records/s", b.run_plain)
        if plain:
            vals = {
                "plain_processing_rps": plain.get("processing_rps"),
                "plain_end_to_end_rps": plain["end_to_end_rps"],
                "kwheel_processing_rps": one and one["processing_rps"],
                "kwheel_end_to_end_rps": one and one["end_to_end_rps"],
            }
            if one and plain.get("processing_rps") and one["processing_rps"]:
                vals["ratio_processing"] = round(one["processing_rps"] / plain["processing_rps"], 3)
            if one:
                vals["ratio_end_to_end"] = round(one["end_to_end_rps"] / plain["end_to_end_rps"], 3)
            b.emit("ceiling", vals, "records/s", n, detail=plain)
    paced: dict[int, dict] = {}
    if "latency" in want:
        r1 = attempt(["latency"], "ms", lambda: b.run_paced(1))
        if r1:
            paced[1] = r1
            b.emit(
                "latency",
                r1["latency_ms"],
                "ms",
                r1["sent"],
                stages=1,
                mode="exactly-once",
                detail=_without(r1, "latency_ms", "watermark_lag_ms"),
            )
    if want & {"latency", "watermark"}:
        r3 = attempt(
            [f for f in ("latency", "watermark") if f in want], "ms", lambda: b.run_paced(3)
        )
        if r3:
            paced[3] = r3
            if "latency" in want:
                b.emit(
                    "latency",
                    r3["latency_ms"],
                    "ms",
                    r3["sent"],
                    stages=3,
                    mode="exactly-once",
                    detail=_without(r3, "latency_ms", "watermark_lag_ms"),
                )
            if "watermark" in want:
                lags = r3["watermark_lag_ms"]
                extra = {"one_stage_run": paced[1]["watermark_lag_ms"]} if 1 in paced else {}
                b.emit(
                    "watermark",
                    lags,
                    "ms",
                    r3["sent"],
                    stages=3,
                    rate=r3["rate"],
                    added_per_stage_p50=_added(lags),
                    samples=r3["watermark_samples"],
                    **extra,
                )
    if "restore" in want:
        r = attempt(["restore"], "records/s, s", b.run_restore)
        if r:
            b.emit(
                "restore",
                {"records_per_s": r["records_per_s"], "seconds": r["restore_s"]},
                "records/s, s",
                r["changelog_records"],
                keys=r["keys"],
                detail=r,
            )
    if "profile" in want:
        pr = attempt(
            ["profile"], "samples", lambda: b.run_throughput(1, label="profile-1p", profile=True)
        )
        if pr:
            b.emit(
                "profile",
                pr.get("profile"),
                "samples",
                n,
                note="one-process throughput run under py-spy "
                "(its rates are not the throughput figure)",
                rates=_rates(pr),
            )
    if "memory" in want and b.memory:
        b.emit("memory", b.memory, "MiB (peak RSS, VmHWM)", None)
    if failed:
        log(f"failed: {', '.join(dict.fromkeys(failed))}")
    return not failed


def _rates(r: dict) -> dict:
    return {"processing_rps": r["processing_rps"], "end_to_end_rps": r["end_to_end_rps"]}


def _without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def _added(lags: dict) -> dict:
    """p50 lag each stage adds to the one before (injector -> stage1 -> stage2 ...)."""
    names = list(lags)
    out = {}
    for prev, cur in zip(names, names[1:]):
        if lags.get(prev) and lags.get(cur):
            out[cur] = round(lags[cur]["p50"] - lags[prev]["p50"], 1)
    return out


if __name__ == "__main__":
    main()
