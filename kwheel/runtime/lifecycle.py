"""A task's life and its counters.

::

    CREATED --fence--> RESTORING --start--> RUNNING --abort--> SUSPENDED
                           |                   ^                  |
                           |                   +------renew-------+
                           +-------------------+------------------+
                                               | close (from any state)
                                               v
                                            CLOSED

- fence: earlier owners fenced, this incarnation's transactional id opened;
- restore (in RESTORING): the store brought up to the end of the changelog;
- start: the store taken up (watermark, seen ids, timers), the computation set up;
- abort: the open batch rewound; its replay needs a fresh producer id (renew). A producer
  that failed (fenced, broker error) leaves the task SUSPENDED too, for close.
Processing, firing timers and committing need RUNNING.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import KwheelError


class TaskState(enum.Enum):
    CREATED = "created"
    RESTORING = "restoring"
    RUNNING = "running"
    SUSPENDED = "suspended"
    CLOSED = "closed"


_MOVES = {
    TaskState.CREATED: {TaskState.RESTORING, TaskState.CLOSED},
    TaskState.RESTORING: {TaskState.RUNNING, TaskState.CLOSED},
    TaskState.RUNNING: {TaskState.SUSPENDED, TaskState.CLOSED},
    TaskState.SUSPENDED: {TaskState.RUNNING, TaskState.CLOSED},
    TaskState.CLOSED: set(),
}


def check_move(task: str, now: TaskState, to: TaskState) -> TaskState:
    """``to``, if a task may go there from ``now``; else a one-line error (a kwheel bug)."""
    if to not in _MOVES[now]:
        raise KwheelError(f"task {task}: cannot go from {now.value} to {to.value}")
    return to


@dataclass
class TaskCounters:
    consumed: int = 0  # input records read, duplicates and replays after an abort included
    processed: int = 0
    produced: int = 0  # output records sent (dead letters and changelog not included)
    duplicates: int = 0
    late: int = 0
    dead_lettered: int = 0
    timers_fired: int = 0
    commits: int = 0
    aborts: int = 0
    restored: int = 0
    restore_total: int = 0  # changelog offsets the running or last restore had to replay
