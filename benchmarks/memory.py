"""Figure 6, ``memory``: peak RSS (``VmHWM`` of ``/proc/<pid>/status``) of the worker
process of every other figure's run, read just before it is stopped; for ``--processes 2``
of each child. The plain loop reads its own at exit (benchmarks/plain.py)."""

from __future__ import annotations

import os

from kwheel.testing.processes import Process

from .common import Bench
from .plain import peak_rss_kib

FIGURE = "memory"


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        for d in os.listdir("/proc"):  # kernels without .../children: scan parent pids
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            out.append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
    return sorted(set(out))


def worker_rss(b: Bench, p: Process, processes: int, label: str) -> dict:
    """Peak RSS of the worker process(es), read just before stopping them; kept for the
    figure under ``label``."""
    pids = child_pids(p.pid) if processes > 1 else [p.pid]
    kib = [peak_rss_kib(pid) for pid in pids]
    mib = [round(k / 1024, 1) for k in kib if k is not None]
    entry = {"peak_rss_mib": max(mib) if mib else None, "processes": len(pids)}
    if len(mib) > 1:
        entry["per_process_mib"] = mib
        entry["sum_mib"] = round(sum(mib), 1)
    b.memory[label] = entry
    return entry


def emit(b: Bench) -> None:
    if b.memory:
        b.emit(FIGURE, b.memory, "MiB (peak RSS, VmHWM)", None)
