"""Read the task events workers write to their stats file (kwheel/runtime/stats_file.py):
one JSON object per line when a task is restored, ready and closed, with its counters.
``WorkerProcess`` gives each worker a stats file next to its log."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..runtime.stats_file import ENV

__all__ = ["ENV", "read_events", "sum_counters", "task_counters"]


def read_events(
    path: str | Path, event: str | None = None, computation: str = ""
) -> list[dict[str, Any]]:
    """The events in ``path``, oldest first: only ``event``s and those of ``computation``
    when given. No file is no events. A line cut short (its worker was killed while
    writing it) is left out."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if (event is None or e["event"] == event) and (
            not computation or e["computation"] == computation
        ):
            out.append(e)
    return out


def sum_counters(events: Iterable[dict[str, Any]]) -> dict[str, int]:
    """The ``counters`` of ``events`` summed, field by field."""
    total: Counter[str] = Counter()
    for e in events:
        total.update(e["counters"])
    return dict(total)


def task_counters(path: str | Path, computation: str = "") -> dict[str, int]:
    """The counters every task (of ``computation``, if given) had when it closed, summed.
    A task of a worker that was killed never closed: it is not counted."""
    return sum_counters(read_events(path, "closed", computation))
