"""Prometheus metrics of worker processes, scraped over HTTP while they run on a real broker."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kwheel.testing.processes import wait_until
from tests.conftest import ROOT
from tests.helpers import count_outputs, setup_topics
from tests.pipelines.injected import from_file

REF = "tests.pipelines.injected:from_file"


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, list]:
    """Samples by name: [(labels, value)]."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


def total(samples: dict, name: str) -> float:
    return sum(v for _, v in samples.get(name, []))


def metrics_port(worker) -> int:
    m = wait_until(
        lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", worker.log()),
        30,
        "the worker to log its metrics port",
    )
    return int(m.group(1))


def write_events(path, n: int, t0: int) -> list[dict]:
    events = [{"user": f"u{i % 11}", "ts": t0 + i * 5} for i in range(n)]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return events


def run_inject(kafka, env):
    e = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kwheel",
            "inject",
            REF,
            "file",
            "-b",
            kafka.bootstrap,
            "--no-final",
        ],
        env=e,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr


def test_worker_metrics_count_records_lag_and_watermarks(kafka, name, workers, tmp_path):
    t0 = int(time.time() * 1000) - 60_000
    events = write_events(tmp_path / "events.jsonl", 600, t0)
    env = {"KWHEEL_TEST_PIPELINE": name, "KWHEEL_TEST_FILE": str(tmp_path / "events.jsonl")}
    setup_topics(kafka.bootstrap, from_file(name))
    w = workers(REF, name, slot="s0", env=env, args=["--metrics-port", "0"])
    port = metrics_port(w)
    # loopback by default: the address it bound answers, another loopback address does not
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", port), timeout=2).close()
    wait_until(
        lambda: total(scrape(port), "kwheel_tasks") == 3, 60, "the worker to open its 3 tasks"
    )
    s = scrape(port)
    assert total(s, "kwheel_records_in_total") == 0
    assert [labels for labels, _ in s["kwheel_worker_info"]] == [
        {"pipeline": name, "slot": "s0", "version": "0.1.0"}
    ]

    run_inject(kafka, env)

    def settled():
        s = scrape(port)
        done = (
            total(s, "kwheel_records_in_total") == len(events)
            and len(s["kwheel_consumer_lag_records"]) == 3
            and total(s, "kwheel_consumer_lag_records") == 0
            and len(s["kwheel_low_watermark_timestamp_seconds"]) == 3
        )
        return s if done else None

    s = wait_until(settled, 60, "every record counted, no lag, a low watermark on every task")
    labels = {tuple(sorted(lb.items())) for lb, _ in s["kwheel_records_in_total"]}
    assert labels == {
        (("computation", "counter"), ("partition", str(p)), ("pipeline", name)) for p in range(3)
    }
    assert total(s, "kwheel_records_processed_total") == len(events)
    assert total(s, "kwheel_records_out_total") == len(
        events
    )  # the counter emits one count per record
    assert total(s, "kwheel_duplicates_dropped_total") == 0
    assert total(s, "kwheel_transaction_aborts_total") == 0
    assert total(s, "kwheel_late_records_total") == 0
    assert total(s, "kwheel_pending_timers") == 0
    assert total(s, "kwheel_restore_remaining_records") == 0
    assert total(s, "kwheel_commits_total") >= 3
    for _, wm in s["kwheel_low_watermark_timestamp_seconds"]:
        assert (
            t0 / 1000 - 1 <= wm <= events[-1]["ts"] / 1000
        )  # the injector's watermark trails its records
    for _, lag in s["kwheel_watermark_lag_seconds"]:
        assert 55 <= lag < 600
    # latency histograms: observed once per commit, summed over the tasks
    assert total(s, "kwheel_commit_duration_seconds_count") == total(s, "kwheel_commits_total")
    assert total(s, "kwheel_batch_duration_seconds_count") == total(s, "kwheel_commits_total")
    assert (
        total(s, "kwheel_batch_duration_seconds_sum")
        >= total(s, "kwheel_commit_duration_seconds_sum")
        > 0
    )

    # the same file again: every record is a duplicate, dropped and counted
    run_inject(kafka, env)
    wait_until(
        lambda: total(scrape(port), "kwheel_duplicates_dropped_total") == len(events),
        60,
        "the duplicates",
    )
    s = scrape(port)
    assert total(s, "kwheel_records_in_total") == 2 * len(events)
    assert total(s, "kwheel_records_processed_total") == len(events)
    assert w.stop() == 0

    # the slot restarted with an empty state directory (another machine) restores every task
    w2 = workers(
        REF,
        name,
        slot="s0",
        env=env,
        args=["--metrics-port", "0"],
        state_dir=tmp_path / "fresh",
        tag="fresh",
    )
    port = metrics_port(w2)
    changelog = count_outputs(kafka.bootstrap, f"{name}.counter.changelog")
    assert changelog > 0

    def restored(s):  # every record replayed and every task open (not still finishing its restore)
        return (
            total(s, "kwheel_restored_records_total") == changelog
            and total(s, "kwheel_tasks") == 3
            and total(s, "kwheel_restore_remaining_records") == 0
        )

    s = wait_until(
        lambda: (lambda s: s if restored(s) else None)(scrape(port)),
        60,
        "every changelog record to be restored and every task ready",
    )
    assert total(s, "kwheel_records_in_total") == 0
    assert w2.stop() == 0


def free_port_pair() -> int:
    """A port p with p and p + 1 free just now."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
            if p >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", p + 1))
                except OSError:
                    continue
                return p
    raise RuntimeError("no two consecutive free ports")


def test_supervised_processes_serve_metrics_on_consecutive_ports(kafka, name, workers, tmp_path):
    events = write_events(tmp_path / "events.jsonl", 300, int(time.time() * 1000) - 10_000)
    env = {"KWHEEL_TEST_PIPELINE": name, "KWHEEL_TEST_FILE": str(tmp_path / "events.jsonl")}
    setup_topics(kafka.bootstrap, from_file(name))
    base = free_port_pair()
    w = workers(
        REF, name, slot="node", env=env, args=["--processes", "2", "--metrics-port", str(base)]
    )

    def both(records: int):
        try:
            a, b = scrape(base), scrape(base + 1)
        except OSError:
            return None
        n = total(a, "kwheel_records_in_total") + total(b, "kwheel_records_in_total")
        shares = (total(a, "kwheel_tasks"), total(b, "kwheel_tasks"))
        return (a, b) if n == records and sum(shares) == 3 and min(shares) >= 1 else None

    # both members own tasks before records flow, so no task moves (and restarts its counters)
    wait_until(lambda: both(0), 90, "both processes to serve metrics and share the 3 tasks")
    run_inject(kafka, env)
    a, b = wait_until(lambda: both(len(events)), 60, "the two processes to count every record")
    slots = {lb["slot"] for s in (a, b) for lb, _ in s["kwheel_worker_info"]}
    assert slots == {"node-0", "node-1"}
    assert w.stop() == 0
