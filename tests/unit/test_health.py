"""/healthz and /ready of a worker, from what its loop and runners show (no broker)."""

from __future__ import annotations

from types import SimpleNamespace

from kwheel.runtime.health import WorkerHealth
from kwheel.runtime.lifecycle import TaskCounters, TaskState


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def task(name, state=TaskState.RUNNING):
    return SimpleNamespace(name=name, state=state, counters=TaskCounters())


def runner(name, tasks=(), member="m-1", opening=None):
    consumer = SimpleNamespace(memberid=lambda: member)
    return SimpleNamespace(
        spec=SimpleNamespace(name=name),
        tasks={i: t for i, t in enumerate(tasks)},
        restoring={} if opening is None else {99: opening},
        consumer=consumer,
        assigned=True,
        kept={},
    )


def test_live_while_the_loop_goes_round_and_stuck_when_it_stops():
    clock = Clock()
    h = WorkerHealth(30.0, clock)
    assert h.live()[0] == 200
    clock.now += 31
    code, body = h.live()
    assert code == 503 and body["status"] == "stuck" and body["since_progress_s"] == 31.0
    h.beat()
    assert h.live()[0] == 200


def test_a_restore_that_progresses_is_live_though_the_loop_waits_for_it():
    clock = Clock()
    h = WorkerHealth(30.0, clock)
    opening = task("c[0]", TaskState.RESTORING)
    h.runners = [runner("c", opening=opening)]
    clock.now += 20
    opening.counters.restored = 5000
    assert h.live()[0] == 200  # progress since the last look
    clock.now += 20
    assert h.live()[0] == 200
    clock.now += 20  # no progress for 40 s
    assert h.live()[0] == 503


def test_stopping_is_live_but_not_ready():
    clock = Clock()
    h = WorkerHealth(30.0, clock)
    h.phase = "stopping"
    clock.now += 100
    assert h.live()[0] == 200
    assert h.ready() == (
        503,
        {"status": "not ready", "phase": "stopping", "waiting_for": ["stopping"]},
    )


def test_ready_once_joined_with_every_task_running():
    h = WorkerHealth(30.0)
    assert h.ready()[0] == 503  # starting
    h.phase = "running"
    h.runners = [runner("a", [task("a[0]"), task("a[1]")]), runner("b", member="")]
    code, body = h.ready()
    assert code == 503 and body["waiting_for"] == ["b: joining its consumer group"]
    h.runners[1].consumer.memberid = lambda: "m-2"
    assert h.ready() == (
        200,
        {"status": "ready", "phase": "running", "tasks": {"a": [0, 1], "b": []}},
    )


def test_not_ready_while_tasks_are_claimed_restored_or_suspended():
    h = WorkerHealth(30.0)
    h.phase = "running"
    restoring = task("a[2]", TaskState.RESTORING)
    restoring.counters.restored, restoring.counters.restore_total = 10, 40
    h.runners = [runner("a", [task("a[0]", TaskState.SUSPENDED)], opening=restoring)]
    h.claim_started("a")
    code, body = h.ready()
    assert code == 503
    assert body["waiting_for"] == [
        "a: claiming tasks",
        "a[2]: restoring (10 of 40 changelog records)",
        "a[0]: suspended",
    ]
    h.step_done("a")
    h.runners[0].restoring = {}
    h.runners[0].tasks[0].state = TaskState.RUNNING
    assert h.ready()[0] == 200


def test_not_ready_between_the_member_id_and_the_first_assignment():
    # the member id comes with the first JoinGroup answer, before any partition: a worker
    # that said ready then had no tasks yet (seen with cooperative rebalancing)
    h = WorkerHealth(30.0)
    h.phase = "running"
    h.runners = [runner("a")]
    h.runners[0].assigned = False
    code, body = h.ready()
    assert code == 503 and body["waiting_for"] == ["a: joining its consumer group"]
    h.runners[0].assigned = True
    assert h.ready()[0] == 200


def test_not_ready_while_an_eager_rebalance_holds_revoked_tasks():
    h = WorkerHealth(30.0)
    h.phase = "running"
    h.runners = [runner("a")]
    h.runners[0].kept = {0: task("a[0]")}
    code, body = h.ready()
    assert code == 503 and body["waiting_for"] == ["a: rebalancing (eager)"]
