"""Prometheus metrics of one worker process, served on ``metrics_host:metrics_port``
(with ``/healthz`` and ``/ready``: runtime/http.py).

The record path pays nothing for them: a scrape reads the counters every Task keeps anyway
(``TaskCounters``, in the scrape's thread), consumer lag is worked out once per tick from
positions the tick reads anyway and the consumer's cached high watermarks, and the two
latency histograms are observed once per commit. Each worker has its own registry, so
nothing leaks into (or from) the process-global one. docs/operations.md lists every metric.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import __version__
from ..errors import ConfigError
from ..watermarks import MAX_WATERMARK, MIN_WATERMARK
from .lifecycle import TaskState

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

    from .health import WorkerHealth
    from .runner import ComputationRunner

log = logging.getLogger("kwheel.metrics")

TASK_LABELS = ("pipeline", "computation", "partition")
# TaskCounters field -> (counter name, help)
COUNTERS = {
    "consumed": (
        "kwheel_records_in_total",
        "Input records read by the task (duplicates and replays after an abort included).",
    ),
    "processed": ("kwheel_records_processed_total", "Input records processed."),
    "produced": ("kwheel_records_out_total", "Records sent to output streams."),
    "duplicates": (
        "kwheel_duplicates_dropped_total",
        "Input records dropped because their id was seen before.",
    ),
    "late": (
        "kwheel_late_records_total",
        "Input records processed with a timestamp below the input watermark.",
    ),
    "dead_lettered": (
        "kwheel_dead_lettered_total",
        "Records and timers sent to the dead-letter stream.",
    ),
    "timers_fired": ("kwheel_timers_fired_total", "Timers fired."),
    "commits": ("kwheel_commits_total", "Transactions committed."),
    "aborts": (
        "kwheel_transaction_aborts_total",
        "Transactions aborted (their batch is replayed).",
    ),
    "restored": (
        "kwheel_restored_records_total",
        "Changelog records replayed into the local store when the task opened.",
    ),
}
# Seconds: from a few ms (an idle tick) to far past the default 100 ms commit interval.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class WorkerMetrics:
    """The metrics of one worker process: its runners' tasks, read at scrape time."""

    def __init__(self, pipeline: str, slot: str | None):
        self.pipeline = pipeline
        self.slot = slot or ""
        self.runners: list[ComputationRunner] = []  # set once the worker made them
        self.lag: dict[tuple[str, int], int] = {}  # (computation, partition) -> records behind
        self.registry = CollectorRegistry(auto_describe=False)
        labels = ["pipeline", "computation"]
        self.batch = Histogram(
            "kwheel_batch_duration_seconds",
            "From the first record or timer of a transaction to its commit.",
            labels,
            registry=self.registry,
            buckets=BUCKETS,
        )
        self.commit = Histogram(
            "kwheel_commit_duration_seconds",
            "Time to commit one task's transaction and apply it to RocksDB.",
            labels,
            registry=self.registry,
            buckets=BUCKETS,
        )
        self.registry.register(_TaskCollector(self))
        self._server: WSGIServer | None = None

    # ---- called by the worker's thread -----------------------------------------------------
    def committed(self, computation: str, began: float, started: float, ended: float) -> None:
        """One task committed a transaction that began at ``began`` (monotonic seconds)."""
        self.batch.labels(self.pipeline, computation).observe(max(0.0, ended - began))
        self.commit.labels(self.pipeline, computation).observe(ended - started)

    def ticked(self, runner: ComputationRunner, positions: dict[tuple[str, int], int]) -> None:
        """Consumer lag per task: cached high watermark (no broker request) minus position."""
        name = runner.spec.name
        for p in list(runner.tasks):
            behind, known = 0, False
            for topic in runner.topics:
                _, high = runner.consumer.get_watermark_offsets(
                    TopicPartition(topic, p), cached=True
                )
                if high is None or high < 0:
                    continue
                known = True
                behind += max(0, high - positions.get((topic, p), 0))
            if known:
                self.lag[(name, p)] = behind
        for key in [k for k in self.lag if k[0] == name and k[1] not in runner.tasks]:
            del self.lag[key]

    # ---- serving -----------------------------------------------------------------------
    def serve(self, host: str, port: int, health: WorkerHealth | None = None) -> int:
        """Start the HTTP server (with ``/healthz`` and ``/ready`` when given ``health``)
        in daemon threads; return the port it listens on."""
        from .http import serve

        try:
            self._server = serve(host, port, self.registry, health)
        except OSError as e:
            raise ConfigError(
                f"metrics_port {port} on {host}: cannot listen: {e.strerror or e}"
            ) from None
        bound = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()


class _TaskCollector(Collector):
    """Reads every task's counters, watermarks and timers when Prometheus scrapes."""

    def __init__(self, metrics: WorkerMetrics):
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        counters = {
            f: CounterMetricFamily(n, h, labels=TASK_LABELS) for f, (n, h) in COUNTERS.items()
        }

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=TASK_LABELS)

        lag = gauge(
            "kwheel_consumer_lag_records",
            "Input records after the task's position (high watermark minus "
            "position, summed over its input topics; markers counted).",
        )
        low = gauge(
            "kwheel_low_watermark_timestamp_seconds",
            "The low watermark the task publishes (min of its input "
            "watermark and pending event timers), +Inf once its inputs ended.",
        )
        inw = gauge(
            "kwheel_input_watermark_timestamp_seconds",
            "The task's input watermark, +Inf once its inputs ended.",
        )
        wlag = gauge("kwheel_watermark_lag_seconds", "Wall clock minus the task's low watermark.")
        timers = gauge("kwheel_pending_timers", "Timers set and not yet fired.")
        restore = gauge(
            "kwheel_restore_remaining_records",
            "Changelog offsets still to replay before the task is ready (0 once restored).",
        )
        tasks = GaugeMetricFamily(
            "kwheel_tasks",
            "Tasks this process runs (restoring ones included).",
            labels=("pipeline", "computation"),
        )
        info = GaugeMetricFamily(
            "kwheel_worker_info",
            "Always 1: the worker's slot and kwheel version.",
            labels=("pipeline", "slot", "version"),
        )
        info.add_metric((m.pipeline, m.slot, __version__), 1)
        now = time.time()
        for runner in list(m.runners):
            name = runner.spec.name
            owned = runner.owned()
            tasks.add_metric((m.pipeline, name), len(owned))
            for p, task in owned:
                labels = (m.pipeline, name, str(p))
                c = task.counters
                restoring = task.state is TaskState.RESTORING
                for f, family in counters.items():
                    family.add_metric(labels, getattr(c, f))
                restore.add_metric(labels, task.restore_remaining)
                timers.add_metric(labels, task.timers.pending)
                behind = m.lag.get((name, p))  # the worker's thread may drop it meanwhile
                if behind is not None:
                    lag.add_metric(labels, behind)
                if restoring:
                    continue
                out = _seconds(task.output_watermark)
                if out is not None:
                    low.add_metric(labels, out)
                    wlag.add_metric(labels, max(0.0, now - out) if math.isfinite(out) else 0.0)
                w = _seconds(task.input_watermark)
                if w is not None:
                    inw.add_metric(labels, w)
        yield from counters.values()
        yield from (lag, low, inw, wlag, timers, restore, tasks, info)


def _seconds(watermark: int) -> float | None:
    """None before any watermark; +Inf at the end of the inputs."""
    if watermark == MIN_WATERMARK:
        return None
    return math.inf if watermark == MAX_WATERMARK else watermark / 1000
