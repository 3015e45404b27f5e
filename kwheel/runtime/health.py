"""Liveness and readiness of a worker process: ``/healthz`` and ``/ready`` on its metrics port.

- live (``/healthz``): the worker loop went round within ``liveness_timeout_s``, or a task
  restoring made progress since the last look (the loop restores in slices between polls,
  so this only matters when one slice is very slow). While starting (waiting for topics, with its own deadline) and while
  stopping, it is live.
- ready (``/ready``): the loop runs, every computation's consumer has joined its group,
  and every task assigned is open and running: none is being claimed, fenced or restored.

Read from the HTTP server's threads, so only through what the worker's thread publishes
here and attributes it keeps up to date anyway: ``runner.tasks`` and each task's
``state``, ``runner.restoring`` (tasks restoring between polls) with their
``counters.restored``, the consumer's member id, ``runner.assigned`` (its first assignment was taken up) and
``runner.kept`` (an eager rebalance in progress). A runner is also not ready while the step that claims its
tasks runs: it reads the watermark topic (``catch_up``) first thing when it opens or
renews a task, and the worker notes that until the step returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .lifecycle import TaskState

if TYPE_CHECKING:
    from .runner import ComputationRunner

Answer = tuple[int, dict[str, object]]  # HTTP status, JSON body


class WorkerHealth:
    def __init__(self, liveness_timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self.timeout_s = liveness_timeout_s
        self.clock = clock
        self.phase = "starting"  # then "running", then "stopping"
        self.runners: list[ComputationRunner] = []
        self.claiming: set[str] = set()  # computations whose current step opens or renews tasks
        self._beat = clock()
        self._restore: tuple[tuple[int, int], ...] = ()  # (task id, restored) when last looked

    # ---- the worker's thread ------------------------------------------------------------
    def beat(self) -> None:
        """The worker made progress (a loop round, a retry while starting)."""
        self._beat = self.clock()

    def claim_started(self, computation: str) -> None:
        self.claiming.add(computation)

    def step_done(self, computation: str) -> None:
        self.claiming.discard(computation)

    # ---- the HTTP server's threads ------------------------------------------------------
    def _restore_progressed(self) -> bool:
        now = tuple(
            (id(t), t.counters.restored)
            for r in list(self.runners)
            for t in list(r.restoring.values())
        )
        moved = bool(now) and now != self._restore
        self._restore = now
        return moved

    def live(self) -> Answer:
        if self._restore_progressed():
            self.beat()
        since = round(self.clock() - self._beat, 3)
        body: dict[str, object] = {"phase": self.phase, "since_progress_s": since}
        if self.phase == "stopping" or since <= self.timeout_s:
            return 200, {"status": "ok", **body}
        return 503, {"status": "stuck", **body, "liveness_timeout_s": self.timeout_s}

    def ready(self) -> Answer:
        if self.phase != "running":
            return 503, {"status": "not ready", "phase": self.phase, "waiting_for": [self.phase]}
        waiting: list[str] = []
        tasks: dict[str, list[int]] = {}
        for r in list(self.runners):
            name = r.spec.name
            owned = dict(r.tasks)
            tasks[name] = sorted(owned)
            if not _joined(r):
                waiting.append(f"{name}: joining its consumer group")
            if name in self.claiming:
                waiting.append(f"{name}: claiming tasks")
            if r.kept:
                waiting.append(f"{name}: rebalancing (eager)")
            for t in list(r.restoring.values()):
                c = t.counters
                waiting.append(
                    f"{t.name}: restoring ({c.restored} of {c.restore_total} changelog records)"
                )
            waiting += [
                f"{t.name}: {t.state.value}"
                for t in owned.values()
                if t.state is not TaskState.RUNNING
            ]
        if waiting:
            return 503, {"status": "not ready", "phase": self.phase, "waiting_for": waiting}
        return 200, {"status": "ready", "phase": self.phase, "tasks": tasks}


def _joined(runner: ComputationRunner) -> bool:
    """A member id alone comes before the first assignment: wait for the runner to have
    taken one up (even an empty one)."""
    try:
        return runner.assigned and bool(runner.consumer.memberid())
    except RuntimeError:  # closed meanwhile
        return False
