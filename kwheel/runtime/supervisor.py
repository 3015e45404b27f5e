"""``--processes N``: run N worker processes, each its own consumer-group member and slot."""

from __future__ import annotations

import signal
import subprocess
import sys
import time


def run_processes(
    n: int,
    child_args: list[str],
    slot: str | None,
    command: str = "worker",
    metrics_port: int | None = None,
) -> int:
    """Start ``n`` ``kwheel <command>`` processes (slots ``slot-0`` .. ``slot-{n-1}``; an
    injector's get ``--instance i --instances n``; workers' metrics ports are
    ``metrics_port + i``, or all 0 for any free port), forward SIGTERM/SIGINT, and return
    the first non-zero exit code (0 when all stopped cleanly)."""
    procs = []
    for i in range(n):
        args = [sys.executable, "-m", "kwheel", command, *child_args, "--processes", "1"]
        if slot:
            args += ["--slot", f"{slot}-{i}"]
        if command == "inject":
            args += ["--instance", str(i), "--instances", str(n)]
        if metrics_port is not None:
            args += ["--metrics-port", str(metrics_port + i if metrics_port else 0)]
        procs.append(subprocess.Popen(args))

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    while any(p.poll() is None for p in procs):
        for p in procs:
            rc = p.poll()
            if rc not in (None, 0) and code == 0:
                code = rc
                forward(signal.SIGTERM, None)  # one failed: stop the rest cleanly
        time.sleep(0.2)
    for p in procs:
        if p.returncode and code == 0:
            code = p.returncode
    return code
