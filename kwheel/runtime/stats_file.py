"""Task counters as JSON lines for programs (the test kit and the benchmarks), not people.

When the environment variable ``KWHEEL_STATS_FILE`` names a file, a worker appends one
JSON object per line to it at three moments of each task's life:

- ``restored``: its store was brought up to the end of its changelog (``seconds`` it took);
- ``ready``: it was assigned and is about to process (the ``assigned and ready`` log line);
- ``closed``: it let go of the task (the ``closed {...}`` log line).

Each object has ``event``, ``computation``, ``partition``, ``pid``, ``time`` (Unix
seconds) and ``counters``: the task's ``TaskCounters`` at that moment (they start at 0 in
each opening of a task). The processes of ``--processes N`` append to the same file: each
line is one ``write`` to a file opened for appending. A worker killed (SIGKILL) writes
nothing more, as it logs nothing more. Without the variable nothing is written.
``kwheel.testing.stats`` reads the file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .task import Task

ENV = "KWHEEL_STATS_FILE"

log = logging.getLogger("kwheel.stats")


def write(event: str, task: Task, **extra: object) -> None:
    """Append ``event`` about ``task`` (a runtime Task) to the stats file, if one is set.
    Never raises: a task must open and close whatever happens to this file."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps(
        {
            "event": event,
            "computation": task.spec.name,
            "partition": task.partition,
            "pid": os.getpid(),
            "time": round(time.time(), 3),
            **extra,
            "counters": asdict(task.counters),
        }
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError as e:
        log.warning("%s=%s: cannot write task stats: %s", ENV, path, e)
