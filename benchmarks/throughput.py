"""Figure 1, ``throughput``: the exactly-once keyed count (``benchmarks.pipelines:keyed_count``)
over the pre-loaded records, by one worker process and by ``--processes 2``.

processing-only records/s: committed offsets polled every 50 ms, records committed from the
first observed commit to all committed, over that time; end-to-end: all records over the
time from starting the worker. The worker's own counters (``processed``, ``duplicates``,
``commits``, from its stats file) are in ``detail`` as a sanity check.

    .venv/bin/python -m benchmarks.throughput [--records N] [options of benchmarks.run]
"""

from __future__ import annotations

import sys
import time

from . import memory
from .common import Bench, log, rates
from .pipelines import keyed_count

FIGURE = "throughput"


def measure(b: Bench, processes: int, label: str | None = None, profiler=None) -> dict:
    """One run over the pre-loaded data. ``profiler`` (benchmarks/profiling.py) is attached
    to the worker at its first commit and detached at its last."""
    n = b.args.records
    label = label or f"throughput-{processes}p"
    name = b.name(label)
    p = keyed_count(name, b.input_topic)
    b.setup_topics(p)
    log(f"{label}: keyed count over {n} records, {processes} worker process(es)")
    started = time.monotonic()
    w = b.start_worker(
        "benchmarks.pipelines:keyed_count", name, label, processes, KWHEEL_BENCH_INPUT=b.input_topic
    )
    on_first = (lambda: profiler.attach(w.pid)) if profiler else None
    profile = None
    try:
        r = b.measure_commits(p.group_id("counter"), b.input_topic, n, started, w, on_first)
        if profiler:
            profile = profiler.detach()
        r["memory"] = memory.worker_rss(b, w, processes, label)
    finally:
        if profiler:
            profiler.cleanup()
        b.stop_worker(w)
    stats = w.task_counters()
    r["processed"] = stats.get("processed")
    r["duplicates"] = stats.get("duplicates")
    r["commits"] = stats.get("commits")
    if r["processed"] is not None and r["processed"] < n:
        log(
            f"{label}: workers report {r['processed']} processed of {n} (a task may have restarted)"
        )
    if profiler:
        r["profile"] = profile
    log(f"{label}: {r['processing_rps']} rec/s processing, {r['end_to_end_rps']} rec/s end to end")
    return r


def emit_one(b: Bench, one: dict) -> None:
    b.emit(
        FIGURE,
        rates(one),
        "records/s",
        b.args.records,
        mode="exactly-once",
        processes=1,
        data=b.data_info,
        detail=one,
    )


def emit_two(b: Bench, two: dict, one: dict | None) -> None:
    vals = rates(two)
    if one and one["processing_rps"] and two["processing_rps"]:
        vals["processing_speedup_vs_1"] = round(two["processing_rps"] / one["processing_rps"], 2)
    if one:
        vals["end_to_end_speedup_vs_1"] = round(two["end_to_end_rps"] / one["end_to_end_rps"], 2)
    b.emit(FIGURE, vals, "records/s", b.args.records, mode="exactly-once", processes=2, detail=two)


if __name__ == "__main__":
    from .run import main

    main(["--only", FIGURE, *sys.argv[1:]])
