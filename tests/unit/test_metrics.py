"""The worker's Prometheus collector over in-memory tasks, and the metrics settings."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kwheel.config import WorkerConfig
from kwheel.errors import ConfigError
from kwheel.runtime.lifecycle import TaskCounters, TaskState
from kwheel.runtime.metrics import COUNTERS, WorkerMetrics
from kwheel.watermarks import MAX_WATERMARK, MIN_WATERMARK


def fake_task(
    partition: int, watermark: int, state: TaskState = TaskState.RUNNING, **counts
) -> SimpleNamespace:
    c = TaskCounters(**counts)
    return SimpleNamespace(
        partition=partition,
        state=state,
        restore_remaining=c.restore_total - c.restored if state is TaskState.RESTORING else 0,
        counters=c,
        timers=SimpleNamespace(pending=2),
        output_watermark=watermark,
        input_watermark=watermark,
    )


class FakeConsumer:
    def __init__(self, highs: dict[tuple[str, int], int]):
        self.highs = highs

    def get_watermark_offsets(self, tp, cached=False):
        assert cached, "a tick must not ask the broker"
        return 0, self.highs.get((tp.topic, tp.partition), -1001)


def fake_runner(tasks: dict, restoring=None, highs=None) -> SimpleNamespace:
    restoring = restoring or {}
    return SimpleNamespace(
        spec=SimpleNamespace(name="count"),
        tasks=tasks,
        owned=lambda: [*tasks.items(), *restoring.items()],
        topics=["in"],
        consumer=FakeConsumer(highs or {}),
    )


def samples(m: WorkerMetrics) -> dict[tuple[str, str], float]:
    """(metric, partition or '') -> value"""
    out = {}
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in family.samples:
            out[(s.name, s.labels.get("partition", ""))] = s.value
    return out


def test_counters_watermarks_and_restores_are_read_from_the_tasks():
    m = WorkerMetrics("pipe", "s0")
    runner = fake_runner(
        {
            0: fake_task(0, 1_700_000_000_000, consumed=7, processed=5, produced=9, duplicates=2),
            1: fake_task(1, MAX_WATERMARK),
        },
        restoring={
            2: fake_task(2, MIN_WATERMARK, TaskState.RESTORING, restored=30, restore_total=100)
        },
    )
    m.runners = [runner]
    s = samples(m)
    assert s[("kwheel_records_in_total", "0")] == 7
    assert s[("kwheel_records_processed_total", "0")] == 5
    assert s[("kwheel_records_out_total", "0")] == 9
    assert s[("kwheel_duplicates_dropped_total", "0")] == 2
    assert s[("kwheel_low_watermark_timestamp_seconds", "0")] == 1_700_000_000
    assert s[("kwheel_low_watermark_timestamp_seconds", "1")] == math.inf
    assert s[("kwheel_watermark_lag_seconds", "1")] == 0
    assert ("kwheel_low_watermark_timestamp_seconds", "2") not in s  # restoring: no watermark yet
    assert s[("kwheel_restore_remaining_records", "2")] == 70
    assert s[("kwheel_restored_records_total", "2")] == 30
    assert s[("kwheel_restore_remaining_records", "0")] == 0
    assert s[("kwheel_tasks", "")] == 3
    assert s[("kwheel_pending_timers", "1")] == 2
    assert s[("kwheel_worker_info", "")] == 1
    assert all((name, "0") in s for name, _ in COUNTERS.values())


def test_lag_comes_from_cached_high_watermarks_and_forgets_revoked_tasks():
    m = WorkerMetrics("pipe", None)
    tasks = {0: fake_task(0, MIN_WATERMARK), 1: fake_task(1, MIN_WATERMARK)}
    runner = fake_runner(tasks, highs={("in", 0): 10})  # partition 1 not fetched yet
    m.runners = [runner]
    m.ticked(runner, {("in", 0): 4})
    s = samples(m)
    assert s[("kwheel_consumer_lag_records", "0")] == 6
    assert ("kwheel_consumer_lag_records", "1") not in s
    del tasks[0]
    m.ticked(runner, {})
    assert ("kwheel_consumer_lag_records", "0") not in samples(m)


def test_latency_histograms_are_observed_per_commit():
    m = WorkerMetrics("pipe", None)
    m.committed("count", began=10.0, started=10.5, ended=10.75)
    s = samples(m)
    assert s[("kwheel_batch_duration_seconds_count", "")] == 1
    assert s[("kwheel_batch_duration_seconds_sum", "")] == 0.75
    assert s[("kwheel_commit_duration_seconds_sum", "")] == 0.25


def test_a_port_in_use_is_a_one_line_error():
    m = WorkerMetrics("pipe", None)
    port = m.serve("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match=rf"metrics_port {port} on 127.0.0.1: cannot listen"):
            WorkerMetrics("pipe", None).serve("127.0.0.1", port)
    finally:
        m.close()


def test_metrics_settings():
    cfg = WorkerConfig()
    assert cfg.metrics_port is None and cfg.metrics_host == "127.0.0.1"
    cfg = WorkerConfig.from_env({"KWHEEL_METRICS_PORT": "9400", "KWHEEL_METRICS_HOST": "0.0.0.0"})
    assert (cfg.metrics_port, cfg.metrics_host) == (9400, "0.0.0.0")
    assert WorkerConfig(metrics_port=0).metrics_port == 0


@pytest.mark.parametrize("bad", [-1, 65536, 1.5, "9400", True])
def test_metrics_port_must_be_a_port(bad):
    with pytest.raises(ConfigError, match=r"config metrics_port: must be a port number"):
        WorkerConfig(metrics_port=bad)


@pytest.mark.parametrize("bad", ["", "a b"])
def test_metrics_host_must_be_a_name(bad):
    with pytest.raises(ConfigError, match=r"config metrics_host"):
        WorkerConfig(metrics_host=bad)
