"""Figure 3, ``latency``: ``benchmarks.pipelines:chain`` with 1 and 3 stages, fed
``--rate`` records/s by an injector thread (``kwheel.injector.Injector``, which also
publishes the source watermark every 200 ms): the time a read_committed reader of the last
stage's output receives each measured record minus its send time. The same runs give
figure 4 (benchmarks/watermark.py).

    .venv/bin/python -m benchmarks.latency [--rate R] [--duration S] [options of benchmarks.run]
"""

from __future__ import annotations

import statistics
import sys
import threading
import time

import orjson

from kwheel.config import WorkerConfig
from kwheel.injector import Injector
from kwheel.testing.readers import CommittedTail

from . import memory
from .common import PARTITIONS, Bench, BenchError, ZipfKeys, log, percentiles, wait_for
from .pipelines import chain
from .watermark import WatermarkSampler

FIGURE = "latency"


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
    """A read_committed reader of the last stage's output (the test kit's CommittedTail,
    waiting at most 5 ms for a fetch): visible time minus send time."""

    def __init__(self, bootstrap: str, topic: str, stop: threading.Event):
        self.stop = stop
        self.tail = CommittedTail(
            bootstrap, topic, {"group.id": "kwheel-bench-latency", "fetch.wait.max.ms": 5}
        )
        self.seen: dict[int, float] = {}  # seq -> latency ms (first sighting)
        self.ready = False

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                records = self.tail.poll(0.05, 1000)
                now = time.time()
                self.ready = True
                for r in records:
                    v = orjson.loads(r.value)
                    self.seen.setdefault(v["seq"], (now - v["sent"]) * 1000)
        finally:
            self.tail.close()

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


def measure(b: Bench, stages: int) -> dict:
    """A ``stages``-stage chain fed at a fixed rate by a PacedInjector thread. A
    LatencyReader measures output-visible time minus send time; a WatermarkSampler samples
    wall clock minus each stage's low watermark every 100 ms."""
    a = b.args
    label = f"latency-{stages}stage"
    name = b.name(label)
    p = chain(name, stages)
    b.setup_topics(p)
    log(f"{label}: {a.rate} records/s for {a.warmup:g}+{a.duration:g}s through {stages} stage(s)")
    w = b.start_worker(
        "benchmarks.pipelines:chain", name, label, 1, KWHEEL_BENCH_STAGES=str(stages)
    )
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        need = PARTITIONS * stages
        wait_for(
            lambda: len(w.task_events("ready")) >= need,
            a.phase_timeout,
            f"{need} tasks of {label} ready",
            0.2,
            w,
        )
        reader = LatencyReader(b.bootstrap, p.streams[f"out{stages}"].topic, stop)
        sampler = WatermarkSampler(
            b.cfg, p, [f"stage{i}" for i in range(1, stages + 1)], "injector:bench/0", stop
        )
        threads = [
            threading.Thread(target=reader.run, daemon=True),
            threading.Thread(target=sampler.run, daemon=True),
        ]
        for t in threads:
            t.start()
        wait_for(lambda: reader.ready and sampler.ready, 30, "latency reader and watermark sampler")
        feeder = PacedInjector(p, b.cfg, b.keys, a.rate, a.warmup, a.duration, stop)
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
        mem = memory.worker_rss(b, w, 1, label)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        b.stop_worker(w)
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
    r["commits"] = w.task_counters().get("commits")
    wm = sampler.lags(feeder.measure_from_wall, feeder.measure_to_wall)
    r["watermark_lag_ms"] = wm
    r["watermark_samples"] = sampler.samples_in(feeder.measure_from_wall, feeder.measure_to_wall)
    log(
        f"{label}: latency {r['latency_ms']} over {len(lat)} of {measured} records; watermark lag {wm}"
    )
    return r


def emit(b: Bench, r: dict) -> None:
    b.emit(
        FIGURE,
        r["latency_ms"],
        "ms",
        r["sent"],
        stages=r["stages"],
        mode="exactly-once",
        detail={k: v for k, v in r.items() if k not in ("latency_ms", "watermark_lag_ms")},
    )


if __name__ == "__main__":
    from .run import main

    main(["--only", FIGURE, *sys.argv[1:]])
