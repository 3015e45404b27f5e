"""The task stats file (kwheel/runtime/stats_file.py) and its reader in the test kit
(kwheel/testing/stats.py, WorkerProcess.task_counters); Process.end of the test kit."""

from __future__ import annotations

import os
import signal
import sys
import time
from types import SimpleNamespace

from kwheel.runtime import stats_file
from kwheel.runtime.lifecycle import TaskCounters
from kwheel.testing.processes import Process, WorkerProcess
from kwheel.testing.stats import read_events, sum_counters, task_counters


def task(computation: str, partition: int, **counters: int):
    return SimpleNamespace(
        spec=SimpleNamespace(name=computation),
        partition=partition,
        counters=TaskCounters(**counters),
    )


def test_nothing_is_written_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(stats_file.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    stats_file.write("closed", task("c", 0, processed=1))
    assert list(tmp_path.iterdir()) == []


def test_closed_counters_are_summed_per_computation(tmp_path, monkeypatch):
    path = tmp_path / "w.stats.jsonl"
    monkeypatch.setenv(stats_file.ENV, str(path))
    stats_file.write("restored", task("count", 0, restored=7), seconds=0.5)
    stats_file.write("ready", task("count", 0, restored=7))
    stats_file.write("closed", task("count", 0, processed=3, late=1, restored=7))
    stats_file.write("closed", task("count", 1, processed=4))
    stats_file.write("closed", task("other", 0, processed=100))
    with open(path, "a") as f:
        f.write('{"event": "closed", "computation": "count", "counters": {"processed"')  # cut short

    restored = read_events(path, "restored")
    assert [(e["computation"], e["partition"], e["seconds"]) for e in restored] == [
        ("count", 0, 0.5)
    ]
    assert restored[0]["pid"] == os.getpid()
    assert len(read_events(path)) == 5
    count = task_counters(path, "count")
    assert count["processed"] == 7 and count["late"] == 1 and count["duplicates"] == 0
    assert task_counters(path)["processed"] == 107
    assert sum_counters(read_events(path, "ready"))["restored"] == 7
    assert task_counters(tmp_path / "missing.jsonl") == {}


def test_an_unwritable_file_is_only_warned_about(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(stats_file.ENV, str(tmp_path / "no-such-dir" / "w.stats.jsonl"))
    stats_file.write("closed", task("c", 0))
    assert "cannot write task stats" in caplog.text


def test_a_worker_process_names_its_stats_file_after_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv(stats_file.ENV, "/elsewhere")
    w = WorkerProcess("m:p", "127.0.0.1:9", tmp_path / "state", tmp_path / "w0.log")
    assert w.stats_path == tmp_path / "w0.stats.jsonl"
    assert w._environment()[stats_file.ENV] == str(tmp_path / "w0.stats.jsonl")
    w.log_path = tmp_path / "other.log"
    assert w.stats_path == tmp_path / "other.stats.jsonl"
    w.stats_path = tmp_path / "given.jsonl"
    assert w._environment()[stats_file.ENV] == str(tmp_path / "given.jsonl")
    assert w.task_counters() == {}


def test_end_kills_the_whole_group_of_a_process_with_its_own_session(tmp_path):
    # a parent that ignores SIGTERM, with a child: both gone after end()
    code = (
        "import signal, subprocess, sys, time;"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "print(c.pid, flush=True); time.sleep(60)"
    )
    p = Process([sys.executable, "-c", code], tmp_path / "p.log", new_session=True).start()
    deadline = time.monotonic() + 10
    while not p.log().strip().splitlines()[1:] and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(p.log().strip().splitlines()[-1])
    assert p.end(0.5) == -signal.SIGKILL
    assert not p.alive()
    deadline = time.monotonic() + 5
    while _exists(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _exists(child)


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone too
    except OSError:
        return False
