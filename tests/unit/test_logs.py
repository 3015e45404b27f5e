"""Log formatting and context: which computation, task and partition a line is about."""

from __future__ import annotations

import io
import json
import logging
import re
from types import SimpleNamespace

import pytest

from kwheel import logs


@pytest.fixture
def capture():
    """A handler like ``logs.configure`` installs, writing to a buffer; returns a reader."""
    made: list[tuple[logging.Handler, io.StringIO]] = []
    logger = logging.getLogger("kwheel.test_logs")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    def make(fmt: str, slot: str | None = None):
        buf = io.StringIO()
        handler = logging.StreamHandler(buf)
        handler.addFilter(logs.ContextFilter(slot))
        handler.setFormatter(logs.JsonFormatter() if fmt == "json" else logs.TextFormatter())
        logger.addHandler(handler)
        made.append((handler, buf))
        return logger, buf

    yield make
    for handler, _ in made:
        logger.removeHandler(handler)


def test_json_lines_have_the_standard_fields(capture):
    log, buf = capture("json")
    log.info("hello %s", "world")
    line = json.loads(buf.getvalue())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert (
        line["level"] == "INFO"
        and line["logger"] == "kwheel.test_logs"
        and line["message"] == "hello world"
    )
    assert isinstance(line["pid"], int)
    assert not {"computation", "task", "partition", "slot"} & set(line)


def test_json_lines_carry_the_task_context(capture):
    log, buf = capture("json", slot="node1-0")
    with logs.log_context("counter", 3):
        log.warning('a\nmultiline "message"')
    with logs.log_context("counter"):
        log.info("computation only")
    task, computation = map(json.loads, buf.getvalue().splitlines())
    assert (
        task["computation"] == "counter" and task["partition"] == 3 and task["task"] == "counter[3]"
    )
    assert task["slot"] == "node1-0" and task["message"] == 'a\nmultiline "message"'
    assert (
        computation["computation"] == "counter"
        and "partition" not in computation
        and "task" not in computation
    )


def test_the_context_ends_with_its_block(capture):
    log, buf = capture("json")
    with logs.log_context("outer"):
        with logs.log_context("inner", 1):
            pass
        log.info("back in outer")
    log.info("outside")
    first, second = map(json.loads, buf.getvalue().splitlines())
    assert first["computation"] == "outer" and "partition" not in first
    assert "computation" not in second
    assert logs.current() is None


def test_exceptions_are_one_json_line(capture):
    log, buf = capture("json")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    [line] = buf.getvalue().splitlines()
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_text_lines_append_computation_and_partition(capture):
    log, buf = capture("text")
    with logs.log_context("counter", 2):
        log.info("restored")
    log.info("plain")
    tagged, plain = buf.getvalue().splitlines()
    assert tagged.endswith("INFO kwheel.test_logs: restored [computation=counter partition=2]")
    assert plain.endswith("INFO kwheel.test_logs: plain")


def test_text_tracebacks_stay_below_the_tagged_line(capture):
    log, buf = capture("text")
    with logs.log_context("counter", 2):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    lines = buf.getvalue().splitlines()
    assert lines[0].endswith("failed [computation=counter partition=2]")
    assert lines[-1] == "ValueError: boom"


class FakeTask:
    def __init__(self, computation: str, partition: int):
        self.spec = SimpleNamespace(name=computation)
        self.partition = partition

    @logs.scoped
    def work(self, log: logging.Logger) -> str:
        log.info("working")
        return "done"

    @logs.scoped
    def fail(self) -> None:
        raise RuntimeError("x")


class FakeRunner:
    spec = SimpleNamespace(name="counter")

    @logs.scoped
    def step(self, task: FakeTask, log: logging.Logger) -> str:
        log.info("runner")
        return task.work(log)


def test_scoped_methods_run_in_their_task_or_computation_context(capture):
    log, buf = capture("json")
    assert FakeRunner().step(FakeTask("counter", 5), log) == "done"
    runner, task = map(json.loads, buf.getvalue().splitlines())
    assert runner["computation"] == "counter" and "partition" not in runner
    assert task["task"] == "counter[5]" and task["partition"] == 5
    with pytest.raises(RuntimeError):
        FakeTask("counter", 1).fail()
    assert logs.current() is None


def test_extra_fields_about_a_task_win_over_the_context(capture):
    log, buf = capture("json")
    with logs.log_context("counter"):
        log.info("assigned", extra=logs.about(FakeTask("counter", 7)))
    line = json.loads(buf.getvalue())
    assert line["partition"] == 7 and line["task"] == "counter[7]"


def test_configure_installs_one_handler_at_the_level():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("WARNING", "json", "s1")
        logs.configure("WARNING", "json", "s1")  # again: still one handler
        [handler] = root.handlers
        assert isinstance(handler.formatter, logs.JsonFormatter) and root.level == logging.WARNING
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_librdkafka_logs_go_through_logging_in_json_format_only():
    from kwheel.config import WorkerConfig
    from kwheel.kafka import clients

    assert clients.base_config(WorkerConfig(log_format="json"))["logger"] is logging.getLogger(
        "kwheel.librdkafka"
    )
    assert "logger" not in clients.group_consumer_config(WorkerConfig(), "g", None)
