"""Figure 4, ``watermark``: wall clock minus each stage's low watermark, sampled every
100 ms during the measured seconds of the 3-stage latency run (benchmarks/latency.py),
with the injector's own published watermark as the baseline, and the 1-stage run's.

    .venv/bin/python -m benchmarks.watermark [--rate R] [--duration S] [options of benchmarks.run]
"""

from __future__ import annotations

import sys
import threading
import time

from kwheel.config import WorkerConfig
from kwheel.watermarks import MAX_WATERMARK, MIN_WATERMARK
from kwheel.watermarks.control import task_producer_id
from kwheel.watermarks.transport import WatermarkReader
from kwheel.watermarks.upstream import WatermarkTable

from .common import PARTITIONS, Bench, percentiles

FIGURE = "watermark"


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


def added(lags: dict) -> dict:
    """p50 lag each stage adds to the one before (injector -> stage1 -> stage2 ...)."""
    names = list(lags)
    out = {}
    for prev, cur in zip(names, names[1:]):
        if lags.get(prev) and lags.get(cur):
            out[cur] = round(lags[cur]["p50"] - lags[prev]["p50"], 1)
    return out


def emit(b: Bench, r3: dict, r1: dict | None) -> None:
    """From the 3-stage paced run ``r3`` (and the 1-stage one ``r1``, if it ran)."""
    lags = r3["watermark_lag_ms"]
    extra = {"one_stage_run": r1["watermark_lag_ms"]} if r1 else {}
    b.emit(
        FIGURE,
        lags,
        "ms",
        r3["sent"],
        stages=3,
        rate=r3["rate"],
        added_per_stage_p50=added(lags),
        samples=r3["watermark_samples"],
        **extra,
    )


if __name__ == "__main__":
    from .run import main

    main(["--only", FIGURE, *sys.argv[1:]])
