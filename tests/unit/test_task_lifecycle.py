"""A task's life (kwheel/runtime/lifecycle.py): the moves drawn there happen, the others are
refused with one line, and a suspended task goes on only after renew."""

from __future__ import annotations

import pytest

from kwheel.errors import KwheelError
from kwheel.runtime.lifecycle import TaskState, check_move
from kwheel.testing import PipelineDriver
from kwheel.testing.memory import MemoryMessage
from tests.unit.test_driver import two_stage

MOVES = {
    (TaskState.CREATED, TaskState.RESTORING),
    (TaskState.RESTORING, TaskState.RUNNING),
    (TaskState.RUNNING, TaskState.SUSPENDED),
    (TaskState.SUSPENDED, TaskState.RUNNING),
} | {(s, TaskState.CLOSED) for s in TaskState if s is not TaskState.CLOSED}


@pytest.mark.parametrize("now", list(TaskState))
@pytest.mark.parametrize("to", list(TaskState))
def test_only_the_drawn_moves_are_allowed(now, to):
    if (now, to) in MOVES:
        assert check_move("c[0]", now, to) is to
    else:
        with pytest.raises(KwheelError, match=f"task c\\[0\\]: cannot go from {now.value} to"):
            check_move("c[0]", now, to)


@pytest.fixture
def driver():
    with PipelineDriver(two_stage(), wall_clock_ms=0) as d:
        yield d


def _events(driver: PipelineDriver, n: int) -> list[MemoryMessage]:
    task = driver._tasks["counter"][0]
    topic = next(iter(task.inputs))
    for i in range(n):
        driver.send("events", f"k{i}", {"user": f"k{i}", "ts": 1_000 + i}, timestamp=1_000 + i)
    return driver.log.read(topic, 0, 0)


def test_an_abort_suspends_the_task_until_it_is_renewed(driver):
    task = driver._tasks["counter"][0]
    assert task.state is TaskState.RUNNING
    msgs = _events(driver, 40)
    assert msgs, "no event landed in partition 0"
    task.process(msgs)
    task.abort()
    assert task.state is TaskState.SUSPENDED
    with pytest.raises(KwheelError, match=r"cannot process while suspended"):
        task.process(msgs)
    with pytest.raises(KwheelError, match=r"cannot process while suspended"):
        task.fire_timers(0)
    before = task.incarnation
    task.renew(before + 1)
    assert (task.state, task.incarnation) == (TaskState.RUNNING, before + 1)
    task.process(msgs)
    task.commit()
    assert task.counters.commits == 1 and task.counters.aborts == 1


def test_renew_is_only_for_a_suspended_task(driver):
    task = driver._tasks["counter"][0]
    with pytest.raises(KwheelError, match=r"renew while running"):
        task.renew(task.incarnation + 1)


def test_a_closed_task_stays_closed(driver):
    task = driver._tasks["counter"][0]
    driver._tasks["counter"].remove(task)  # closed here, not again by the driver
    task.close()
    assert task.state is TaskState.CLOSED
    task.close()  # a second close is a no-op
    with pytest.raises(KwheelError, match=r"cannot process while closed"):
        task.process([])


def test_the_driver_renews_a_task_whose_commit_aborted(driver, monkeypatch):
    """The worker renews after an abort (runner.commit); so does the driver, so a pipeline
    keeps running in it after a transaction outlived its timeout."""
    aborted = []

    def expired_once(task):
        if aborted:
            return False
        aborted.append(task.name)
        task.abort()
        return True

    for task in driver._tasks["counter"]:
        monkeypatch.setattr(task, "_expired", lambda task=task: expired_once(task))
    driver.send("events", "a", {"user": "a", "ts": 1_000}, timestamp=1_000)
    driver.run()
    (task,) = [t for t in driver._tasks["counter"] if t.name in aborted]
    assert task.counters.aborts == 1 and task.state is TaskState.RUNNING
    assert [r.value["count"] for r in driver.outputs("counts")] == [1]  # replayed, once
