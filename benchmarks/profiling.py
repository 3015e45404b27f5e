"""``profile`` (``--profile``): one more one-process throughput run (benchmarks/throughput.py)
with ``py-spy record -f raw --nonblocking`` attached from its first commit to its last; the
top functions by self time (the innermost Python frame of each sample) and by inclusive
time. Its rates are printed but are not the throughput figure: the sampler takes CPU from
the worker.

    .venv/bin/python -m benchmarks.profiling [--records N] [--profile-rate R] [options of benchmarks.run]
"""

from __future__ import annotations

import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path

from kwheel.testing.processes import Process

from . import throughput
from .common import ROOT, Bench, log, rates, tail

FIGURE = "profile"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


class PySpy:
    """py-spy attached to a process (``attach``) until ``detach``, which summarises what it
    sampled; ``cleanup`` stops it if it still runs."""

    def __init__(self, b: Bench, label: str):
        self.b, self.label = b, label
        self.out = b.work / f"{label}.pyspy.txt"
        self.proc: Process | None = None

    def attach(self, pid: int) -> None:
        exe = Path(sys.executable).with_name("py-spy")
        if not exe.exists():
            exe = Path(shutil.which("py-spy") or "py-spy")
        args = [
            str(exe),
            "record",
            "-p",
            str(pid),
            "-f",
            "raw",
            "-o",
            str(self.out),
            "-r",
            str(self.b.args.profile_rate),
            "--nonblocking",
        ]
        log(f"py-spy attached to worker pid {pid}")
        self.proc = self.b.start_process(f"{self.label}.pyspy", args)

    def detach(self) -> dict:
        p, self.proc = self.proc, None
        if p is not None:
            p.end(30, signal.SIGINT)  # SIGINT: py-spy writes what it sampled
        if not self.out.exists() or self.out.stat().st_size == 0:
            return {
                "error": "py-spy took no samples (a short run can end before it starts sampling: "
                f"use more --records){tail(p)}"
            }
        return summarise(self.out, self.b.args.profile_top)

    def cleanup(self) -> None:
        if self.proc is not None:
            self.proc.end(10, signal.SIGINT)


def measure(b: Bench) -> dict:
    label = "profile-1p"
    return throughput.measure(b, 1, label=label, profiler=PySpy(b, label))


def emit(b: Bench, pr: dict) -> None:
    b.emit(
        FIGURE,
        pr.get("profile"),
        "samples",
        b.args.records,
        note="one-process throughput run under py-spy (its rates are not the throughput figure)",
        rates=rates(pr),
    )


def summarise(path: Path, top: int) -> dict:
    """Top functions by self time (the leaf of each sampled stack) and by inclusive time,
    from py-spy's raw (collapsed stacks) output."""
    selfc: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if f is not None]
        if not frames:
            continue
        total += n
        selfc[frames[-1]] += n
        for f in set(frames):
            incl[f] += n

    def rows(c: Counter) -> list[dict]:
        return [
            {"function": f, "samples": s, "percent": round(100 * s / total, 1)}
            for f, s in c.most_common(top)
        ]

    # the trunk every sample passes through (runpy, the CLI, Worker.run) says nothing
    for f in [f for f, s in incl.items() if s >= 0.99 * total]:
        del incl[f]
    return {
        "samples": total,
        "top_self": rows(selfc),
        "top_inclusive": rows(incl),
        "note": "self time of a Python function includes the C calls it makes (librdkafka, orjson, RocksDB, pickle)",
    }


def _frame_name(frame: str) -> str | None:
    frame = frame.strip()
    if frame.startswith(("process ", "thread ")):
        return None  # py-spy's process/thread pseudo-frames
    m = FRAME.match(frame)
    if not m:
        return frame
    f = m.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in f:
            f = f.split(marker, 1)[1]
            break
    else:
        try:
            f = str(Path(f).resolve().relative_to(ROOT))
        except (ValueError, OSError):
            pass
    return f"{m.group('func')} ({f})"


if __name__ == "__main__":
    from .run import main

    main(["--only", FIGURE, *sys.argv[1:]])
