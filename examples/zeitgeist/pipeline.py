"""Zeitgeist, MillWheel's motivating pipeline: spikes and dips in search-query traffic.

    queries (injected) -> window_counter -> counts -> model -> anomalies

``window_counter`` counts each query per one-second event-time window; ``model`` keeps a
per-query model of expected traffic (an exponentially weighted mean) and reports windows
far above it (a spike) or far below it (a dip), with their magnitude. A window with no
queries at all produces no count, so the model notices it with an event-time timer: once
the watermark passes the end of the next window without a count, that window was empty.
"""

from __future__ import annotations

import math
import os

from kwheel import MAX_WATERMARK, Computation, Pipeline, Tumbling, WindowedAggregation
from kwheel.sources import Synthetic

from .traffic import Traffic

WINDOW_MS = 1000
WARMUP_WINDOWS = 10
ALPHA = 0.1  # weight of a new window in the expected rate
IDLE_WINDOWS = 30  # stop expecting traffic after this many empty windows


class QueryCounter(WindowedAggregation):
    windows = Tumbling(WINDOW_MS)

    def initial(self) -> int:
        return 0

    def add(self, acc: int, record) -> int:
        return acc + 1

    def emit(self, ctx, window, acc: int) -> None:
        # emitted at the window's end (the timer's time), so never late downstream
        ctx.produce("counts", ctx.key, {"query": ctx.key, "start": window.start, "count": acc})


SURPRISE = 1e-6  # how unlikely a count must be under the model to be reported


def classify(count: int, expected: float) -> str | None:
    """'spike', 'dip' or None. Query counts per window are modelled as Poisson around the
    expected rate: report a window that is both very unlikely under it (p < SURPRISE) and
    far from it (at least double, or at most half)."""
    if expected <= 0:
        return None
    if count >= 2 * expected and _tail(count, expected, upper=True) < SURPRISE:
        return "spike"
    if count <= 0.5 * expected and _tail(count, expected, upper=False) < SURPRISE:
        return "dip"
    return None


def _tail(count: int, lam: float, upper: bool) -> float:
    """P(X >= count) or P(X <= count) for X ~ Poisson(lam)."""

    def pmf(k: int) -> float:
        return math.exp(k * math.log(lam) - lam - math.lgamma(k + 1))

    if upper:
        return sum(pmf(k) for k in range(count, count + 50 + int(10 * math.sqrt(lam))))
    return sum(pmf(k) for k in range(0, count + 1))


class TrafficModel(Computation):
    def process_record(self, ctx, record):
        c = record.value
        last = ctx.state.get("last")
        if last is not None and c["start"] <= last:
            return  # an older window (a late re-count): the model has moved on
        if last is not None:
            for start in range(last + WINDOW_MS, c["start"], WINDOW_MS):
                self._evaluate(ctx, start, 0)  # windows with no queries at all
        self._evaluate(ctx, c["start"], c["count"])
        ctx.state["idle"] = 0
        ctx.set_timer("next", c["start"] + 2 * WINDOW_MS)

    def process_timer(self, ctx, timer):
        if ctx.low_watermark >= MAX_WATERMARK:
            return  # the input ended: silence after it is not a dip
        start = ctx.state["last"] + WINDOW_MS  # no count arrived for this window: it was empty
        self._evaluate(ctx, start, 0)
        idle = ctx.state.get("idle", 0) + 1
        ctx.state["idle"] = idle
        if idle < IDLE_WINDOWS:
            ctx.set_timer("next", start + 2 * WINDOW_MS)

    def _evaluate(self, ctx, start: int, count: int) -> None:
        n = ctx.state.get("n", 0)
        mean = ctx.state.get("mean", 0.0)
        kind = classify(count, mean) if n >= WARMUP_WINDOWS else None
        if kind:
            ctx.produce(
                "anomalies",
                ctx.key,
                {
                    "query": ctx.key,
                    "kind": kind,
                    "start": start,
                    "count": count,
                    "expected": round(mean, 1),
                    "magnitude": round(count / mean, 2) if mean else None,
                },
                start + WINDOW_MS,
            )
        else:  # anomalies do not teach the model what normal looks like
            mean = (
                mean + (count - mean) / (n + 1)
                if n < WARMUP_WINDOWS
                else (1 - ALPHA) * mean + ALPHA * count
            )
            ctx.state["mean"] = mean
            ctx.state["n"] = n + 1
        ctx.state["last"] = start


def build(name: str = "zeitgeist", traffic: Traffic | None = None, partitions: int = 4) -> Pipeline:
    traffic = traffic or Traffic()
    p = Pipeline(name)
    p.stream("queries", partitions=partitions, value="json")
    p.stream("counts", partitions=partitions, value="json")
    p.stream("anomalies", partitions=1, value="json")
    p.injector(
        "queries",
        lambda: Synthetic(traffic.records),
        outputs=["queries"],
        disorder_ms=traffic.disorder_ms,
    )
    p.computation("window_counter", QueryCounter, inputs=["queries"], outputs=["counts"])
    p.computation("model", TrafficModel, inputs=["counts"], outputs=["anomalies"])
    return p


def _from_env() -> Pipeline:
    """The pipeline as configured by KWHEEL_ZEITGEIST_* (the demo and tests set them)."""
    env = os.environ
    kw = {
        k: int(env[f"KWHEEL_ZEITGEIST_{k.upper()}"])
        for k in ("seed", "queries", "seconds", "start_ms", "spikes", "dips")
        if f"KWHEEL_ZEITGEIST_{k.upper()}" in env
    }
    return build(env.get("KWHEEL_ZEITGEIST_NAME", "zeitgeist"), Traffic(**kw))


pipeline = _from_env()
