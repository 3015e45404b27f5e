"""Declared injectors run by `kwheel inject`: JSON lines and an existing topic, re-reads dedup."""

import json
import os
import subprocess
import sys
import time
from collections import Counter

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kwheel.testing.processes import WorkerProcess, wait_until
from kwheel.watermarks import MAX_WATERMARK
from tests.conftest import ROOT
from tests.helpers import (
    check_exact_counts,
    count_outputs,
    latest_watermark,
    read_controls,
    setup_topics,
)
from tests.pipelines.injected import from_file, from_topic


def run_inject(kafka, ref, injector, env, *args):
    e = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "kwheel", "inject", ref, injector, "-b", kafka.bootstrap, *args],
        env=e,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_json_lines_shared_by_two_processes_and_re_read_without_duplicates(
    kafka, name, workers, tmp_path
):
    path = tmp_path / "events.jsonl"
    t0 = int(time.time() * 1000) - 60_000
    events = [{"user": f"u{i % 13}", "ts": t0 + i * 7} for i in range(900)]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    env = {"KWHEEL_TEST_PIPELINE": name, "KWHEEL_TEST_FILE": str(path)}
    setup_topics(kafka.bootstrap, from_file(name))
    w = workers("tests.pipelines.injected:from_file", name, slot="s0", env=env)
    # --no-final: the stream goes on after this file (as after a crash, nothing says "the end")
    r = run_inject(
        kafka, "tests.pipelines.injected:from_file", "file", env, "--processes", "2", "--no-final"
    )
    assert r.returncode == 0, r.stderr
    wait_until(
        lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events), 60, "all counts"
    )
    # each instance published its own watermark
    injectors = {c.producer for c in read_controls(kafka.bootstrap, name) if c.kind == "INJECTOR"}
    assert injectors == {"injector:file/0", "injector:file/1"}
    # re-reading the file (a restarted injector) sends the same ids again: all dropped
    r = run_inject(kafka, "tests.pipelines.injected:from_file", "file", env, "--instances", "2")
    assert r.returncode == 0, r.stderr
    r = run_inject(
        kafka,
        "tests.pipelines.injected:from_file",
        "file",
        env,
        "--instances",
        "2",
        "--instance",
        "1",
    )
    assert r.returncode == 0, r.stderr
    wait_until(
        lambda: latest_watermark(kafka.bootstrap, name, "task:counter/") == MAX_WATERMARK,
        60,
        "the counter to see both instances finish",
    )
    assert w.stop() == 0
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(e["user"] for e in events))
    assert w.task_counters()["duplicates"] == len(events)


def test_an_existing_topic_is_injected_with_ids_from_positions(kafka, name, workers):
    topic = f"{name}.external"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for f in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        f.result()
    t0 = int(time.time() * 1000) - 60_000
    events = [{"user": f"u{i % 11}", "ts": t0 + i * 5} for i in range(700)]
    prod = Producer({"bootstrap.servers": kafka.bootstrap})
    for i, e in enumerate(events):  # a plain producer: no kwheel ids, keys of its own
        prod.produce(topic, json.dumps(e).encode(), f"other-key-{i}".encode(), partition=i % 2)
    prod.flush(10)
    env = {"KWHEEL_TEST_PIPELINE": name, "KWHEEL_TEST_TOPIC": topic}
    setup_topics(kafka.bootstrap, from_topic(name))
    w = workers("tests.pipelines.injected:from_topic", name, slot="s0", env=env)
    ref = "tests.pipelines.injected:from_topic"
    injectors = []
    for injector in ("topic", "topic-again"):  # the second re-reads everything (its own group)
        e = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        inj = WorkerProcess(ref, kafka.bootstrap, ROOT, ROOT / "unused.log", env=e)
        inj.args = [sys.executable, "-m", "kwheel", "inject", ref, injector, "-b", kafka.bootstrap]
        inj.log_path = w.log_path.with_name(f"{injector}.log")
        injectors.append(inj.start())
        wait_until(
            lambda: count_outputs(kafka.bootstrap, f"{name}.counts") >= len(events),
            60,
            "all counts",
        )
    wait_until(
        lambda: (
            sum(
                c.stats.get("sent", 0)
                for c in read_controls(kafka.bootstrap, name)
                if c.producer == "injector:topic-again/0"
            )
            >= len(events)
        ),
        60,
        "the re-read",
    )
    for inj in injectors:
        assert inj.stop() == 0, inj.log()
    assert w.stop() == 0
    check_exact_counts(kafka.bootstrap, f"{name}.counts", Counter(e["user"] for e in events))
    assert w.task_counters()["duplicates"] == len(events)
