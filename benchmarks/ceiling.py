"""Figure 2, ``ceiling``: the plain confluent-kafka exactly-once loop (benchmarks/plain.py)
over the same pre-loaded records on the same broker, and the ratios kwheel (one worker
process, figure 1's run) / plain loop.

The plain loop finishes within a few commit intervals, too short for 50 ms polling: its
processing-only rate is the same definition taken from its own clock (first commit to
last), the polled one is kept in ``detail.polled_processing_rps``.

    .venv/bin/python -m benchmarks.ceiling [--records N] [options of benchmarks.run]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from .common import ROOT, Bench, BenchError, last_json, log, tail

FIGURE = "ceiling"


def measure(b: Bench) -> dict:
    n = b.args.records
    label = "plain"
    out = f"{b.run_id}.plain.counts"
    b.create_input_topic(out)
    group = f"{b.run_id}.plain"
    args = [
        sys.executable,
        "-m",
        "benchmarks.plain",
        "--bootstrap",
        b.bootstrap,
        "--input",
        b.input_topic,
        "--output",
        out,
        "--group",
        group,
        "--transactional-id",
        f"{b.run_id}.plain",
        "--expect",
        str(n),
        "--timeout",
        str(b.args.phase_timeout),
    ]
    log(f"plain loop over the same {n} records")
    started = time.monotonic()
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = b.start_process(label, args, env)
    try:
        r = b.measure_commits(group, b.input_topic, n, started, proc)
    except BenchError:
        if proc.alive():
            raise
        r = None  # it may have finished between two polls: its own line says
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    proc.end(10)
    own = last_json(proc.log_path)
    if r is None:
        if not own or own.get("committed", 0) < n:
            raise BenchError(f"plain loop failed{tail(proc)}")
        r = {"processing_rps": None, "end_to_end_rps": round(n / own["total_s"])}
    if own:
        # The plain loop finishes in a few commit intervals, too short for polling: take
        # the same definition from its own clock (first commit to last), keep the polled one.
        r["own_timing"] = own
        r["polled_processing_rps"] = r["processing_rps"]
        if own.get("processing_rps"):
            r["processing_rps"] = own["processing_rps"]
        if own.get("peak_rss_kib"):
            b.memory[label] = {
                "peak_rss_mib": round(own["peak_rss_kib"] / 1024, 1),
                "processes": 1,
            }
            r["memory"] = b.memory[label]
    log(
        f"plain: {r.get('processing_rps')} rec/s processing, {r['end_to_end_rps']} rec/s end to end"
    )
    return r


def emit(b: Bench, plain: dict, one: dict | None) -> None:
    """``one``: the one-process kwheel run of figure 1 (None if it failed)."""
    vals = {
        "plain_processing_rps": plain.get("processing_rps"),
        "plain_end_to_end_rps": plain["end_to_end_rps"],
        "kwheel_processing_rps": one and one["processing_rps"],
        "kwheel_end_to_end_rps": one and one["end_to_end_rps"],
    }
    if one and plain.get("processing_rps") and one["processing_rps"]:
        vals["ratio_processing"] = round(one["processing_rps"] / plain["processing_rps"], 3)
    if one:
        vals["ratio_end_to_end"] = round(one["end_to_end_rps"] / plain["end_to_end_rps"], 3)
    b.emit(FIGURE, vals, "records/s", b.args.records, detail=plain)


if __name__ == "__main__":
    from .run import main

    main(["--only", FIGURE, *sys.argv[1:]])
