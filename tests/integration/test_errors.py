"""Bad input: a one-line error that says what and where, a non-zero exit, nothing lost."""

import json
import os
import subprocess
import sys
import time
from collections import Counter

from kwheel.testing.processes import wait_until
from kwheel.testing.readers import read_committed
from tests.conftest import ROOT
from tests.helpers import (
    check_exact_counts,
    committed_total,
    count_outputs,
    inject,
    make_events,
    setup_topics,
)
from tests.pipelines.counting import flaky_count, flaky_count_dlq


def kwheel(*args, env=None, timeout=60):
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "kwheel", *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
        cwd=ROOT,
    )


def error_line(result) -> str:
    lines = [l for l in result.stderr.splitlines() if l.startswith("kwheel: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_bad_pipeline_reference(kafka):
    r = kwheel("worker", "no_colon_here", "-b", kafka.bootstrap)
    assert r.returncode == 1 and "expected module:attribute" in error_line(r)
    r = kwheel("worker", "no.such.module:pipeline", "-b", kafka.bootstrap)
    assert r.returncode == 1 and "cannot import pipeline module 'no.such.module'" in error_line(r)
    r = kwheel("worker", "tests.pipelines.counting:nope", "-b", kafka.bootstrap)
    assert r.returncode == 1 and "has no attribute 'nope'" in error_line(r)
    r = kwheel("worker", "tests.pipelines.explodes:pipeline", "-b", kafka.bootstrap)
    assert r.returncode == 1 and "RuntimeError: boom while importing" in error_line(r)


def test_invalid_graph_is_rejected_at_load(kafka):
    r = kwheel("topics", "create", "tests.pipelines.broken:unknown_stream", "-b", kafka.bootstrap)
    assert r.returncode == 1
    assert "computation 'c' writes unknown stream 'nowhere'" in error_line(r)


def test_bad_config_fails_fast(kafka):
    r = kwheel(
        "worker",
        "tests.pipelines.counting:keyed_count",
        "-b",
        kafka.bootstrap,
        env={"KWHEEL_BATCH_SIZE": "lots"},
    )
    assert r.returncode == 1 and "KWHEEL_BATCH_SIZE='lots': expected an integer" in error_line(r)
    r = kwheel(
        "worker", "tests.pipelines.counting:keyed_count", "-b", kafka.bootstrap, "--batch-size", "0"
    )
    assert r.returncode == 1 and "batch_size: must be a positive integer" in error_line(r)
    r = kwheel("worker", "tests.pipelines.counting:keyed_count", "-b", "no-port-here")
    assert r.returncode == 1 and "bootstrap_servers: expected host:port" in error_line(r)
    r = kwheel(
        "worker", "tests.pipelines.counting:keyed_count", "-b", kafka.bootstrap, "-c", "nope"
    )
    assert r.returncode == 1 and "unknown computation 'nope'" in error_line(r)


def test_unreachable_broker_gives_up_with_a_clear_error():
    from kwheel.testing.broker import free_port

    port = free_port()
    r = kwheel(
        "worker",
        "tests.pipelines.counting:keyed_count",
        "-b",
        f"127.0.0.1:{port}",
        env={"KWHEEL_STARTUP_TIMEOUT_S": "2"},
    )
    assert r.returncode == 1
    assert f"cannot reach Kafka at 127.0.0.1:{port} within 2s" in error_line(r)


def _poisoned_events():
    events = make_events(600, keys=7)
    events[350] = (events[350][0], {**events[350][1], "poison": True})
    return events


def test_crashing_user_function_stops_the_task_and_loses_nothing(kafka, name, workers):
    p = flaky_count(name)
    setup_topics(kafka.bootstrap, p)
    events = _poisoned_events()
    inject(kafka.bootstrap, p, events)
    w = workers("tests.pipelines.counting:flaky_count", name, slot="s0")
    assert w.wait(60) == 1
    log = w.log()
    errors = [l for l in log.splitlines() if l.startswith("kwheel: error:")]
    assert len(errors) == 1, log
    poison_key = events[350][0]
    assert f"computation 'counter' failed on key '{poison_key}' at {name}.events[" in errors[0]
    assert "ValueError: poisoned record 350" in errors[0]
    # the poisoned record's offset was not committed: a fixed deployment picks it up
    assert committed_total(kafka.bootstrap, f"{name}.counter", f"{name}.events", 2) < len(events)
    cured = workers(
        "tests.pipelines.counting:flaky_count",
        name,
        slot="s0",
        tag="cured",
        env={"KWHEEL_TEST_CURED": "1"},
    )
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 60, "all counts"
    )
    assert cured.stop() == 0
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(k for k, _ in events))


def test_dead_letter_stream_sets_the_record_aside_and_goes_on(kafka, name, workers):
    p = flaky_count_dlq(name)
    setup_topics(kafka.bootstrap, p)
    events = _poisoned_events()
    inject(kafka.bootstrap, p, events)
    w = workers("tests.pipelines.counting:flaky_count_dlq", name, slot="s0")
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events) - 1,
        60,
        "all good counts",
    )
    wait_until(lambda: count_outputs(kafka.bootstrap, f"{name}.dead") >= 1, 30, "the dead letter")
    assert w.stop() == 0
    good = Counter(k for k, v in events if not v.get("poison"))
    check_exact_counts(kafka.bootstrap, f"{name}.counts", good)
    [dead] = read_committed(kafka.bootstrap, f"{name}.dead")
    assert json.loads(dead.value)["seq"] == 350
    headers = dict(dead.headers)
    assert b"ValueError: poisoned record 350" in headers["kwheel.error"]
    assert headers["kwheel.source"].startswith(f"{name}.events[".encode())


def test_a_worker_stopped_by_a_poison_record_raises_no_watermark_past_records_it_never_read(
    kafka, name, workers
):
    # one poll brings records of both partitions; the first task's poison record stops the
    # worker before the second task processed its share, though its consumer position is
    # past it. Closing with a tick raised that task's watermark from that position (to the
    # injector's final one) and committed it: after the fix, every one of its records came late.
    from kwheel.config import WorkerConfig
    from kwheel.injector import Injector

    p = flaky_count(name)
    setup_topics(kafka.bootstrap, p)
    inj = Injector(
        p, "source", ["events"], WorkerConfig(bootstrap_servers=kafka.bootstrap), instance="i0"
    )
    events = make_events(400, keys=8)
    t0 = int(time.time() * 1000) - 60_000
    for i, (key, value) in enumerate(events):  # each partition's first records are poisoned
        inj.send("events", key, {**value, "poison": i < 8}, timestamp=t0 + i)
    inj.close(final=True)
    w = workers("tests.pipelines.counting:flaky_count", name, slot="s0")
    assert w.wait(60) == 1
    cured = workers(
        "tests.pipelines.counting:flaky_count",
        name,
        slot="s0",
        tag="cured",
        env={"KWHEEL_TEST_CURED": "1"},
    )
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 60, "all counts"
    )
    assert cured.stop() == 0
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(k for k, _ in events))
    assert cured.task_counters()["late"] == 0
