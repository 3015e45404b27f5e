"""Synthetic search-query traffic with planted spikes and dips (deterministic per seed).

Each query has a base rate (queries per second). A few queries get a spike (the rate
multiplied for a few seconds) or a dip (no traffic for a few seconds). Event times start
``seconds`` before the start time, so the demo replays minutes of traffic in seconds.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from kwheel.sources import SourceRecord


@dataclass(frozen=True)
class Anomaly:
    query: str
    kind: str  # "spike" or "dip"
    start_ms: int  # first affected one-second window
    windows: int

    @property
    def window_starts(self) -> list[int]:
        return [self.start_ms + i * 1000 for i in range(self.windows)]


@dataclass
class Traffic:
    seed: int = 7
    queries: int = 40
    seconds: int = 120
    min_rate: int = 20
    max_rate: int = 60
    spikes: int = 4
    dips: int = 4
    anomaly_windows: int = 3
    spike_factor: float = 6.0
    warmup_s: int = 20
    disorder_ms: int = 200
    start_ms: int | None = None  # first window; default: `seconds` before now
    _plan: tuple[dict[str, float], list[Anomaly]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.start_ms is None:
            self.start_ms = (int(time.time()) - self.seconds) * 1000
        if self.spikes + self.dips > self.queries:
            raise ValueError("more planted anomalies than queries")

    def query(self, i: int) -> str:
        return f"query-{i:03d}"

    def plan(self) -> tuple[dict[str, float], list[Anomaly]]:
        """Base rate per query and the planted anomalies."""
        if self._plan is None:
            rng = random.Random(self.seed)
            rates = {
                self.query(i): rng.uniform(self.min_rate, self.max_rate)
                for i in range(self.queries)
            }
            chosen = rng.sample(sorted(rates), self.spikes + self.dips)
            last = self.seconds - self.anomaly_windows - 5
            anomalies = [
                Anomaly(
                    q,
                    "spike" if i < self.spikes else "dip",
                    self.start_ms + rng.randrange(self.warmup_s, last) * 1000,
                    self.anomaly_windows,
                )
                for i, q in enumerate(chosen)
            ]
            self._plan = (rates, anomalies)
        return self._plan

    def rate(self, query: str, window_start: int) -> float:
        rates, anomalies = self.plan()
        for a in anomalies:
            if a.query == query and window_start in a.window_starts:
                return rates[query] * self.spike_factor if a.kind == "spike" else 0.0
        return rates[query]

    def records(self, instance: int = 0, instances: int = 1) -> Iterator[SourceRecord]:
        """This instance's share of the queries, in bounded-disorder arrival order."""
        rng = random.Random(self.seed * 1000 + instance)
        names = [self.query(i) for i in range(self.queries) if i % instances == instance]
        pending: list[tuple[float, int, str]] = []
        for s in range(self.seconds):
            window = self.start_ms + s * 1000
            for q in names:
                for _ in range(_poisson(rng, self.rate(q, window))):
                    ts = window + rng.randrange(1000)
                    pending.append((ts + rng.uniform(0, self.disorder_ms - 1), ts, q))
            # what arrives before the next second's records can overtake it
            pending.sort()
            horizon = window + 1000
            ready = [p for p in pending if p[0] < horizon]
            pending = [p for p in pending if p[0] >= horizon]
            for _, ts, q in ready:
                yield SourceRecord(q, {"query": q}, ts)
        for _, ts, q in sorted(pending):
            yield SourceRecord(q, {"query": q}, ts)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam < 30:  # Knuth
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= rng.random()
            if p <= limit:
                return k
            k += 1
    return max(0, round(rng.gauss(lam, math.sqrt(lam))))
