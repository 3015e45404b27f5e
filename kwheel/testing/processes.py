"""Processes for end-to-end tests and benchmarks: start, SIGKILL, SIGSTOP, stop, read their
logs; ``kwheel worker`` processes also report their tasks' counters (``task_counters``)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar, cast

from .stats import ENV as STATS_ENV
from .stats import read_events, task_counters

logger = logging.getLogger("kwheel.testing")
T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1
) -> T:
    """Poll ``predicate`` until it returns something truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


class Process:
    """One subprocess with its output (stdout and stderr) appended to a log file.

    ``new_session``: the process leads a process group of its own (its children join it),
    so ``end()`` can kill what it started too, and a Ctrl-C in the terminal does not reach
    it."""

    what = "process"  # in error messages

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
    ):
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.new_session = new_session
        self.proc: subprocess.Popen[bytes] | None = None

    def _header(self) -> str:
        return " ".join(self.args)

    def _environment(self) -> dict[str, str]:
        return self.env

    def start(self) -> Self:
        with open(self.log_path, "ab") as log:
            log.write(f"=== start {self._header()}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(),
                cwd=self.cwd,
                start_new_session=self.new_session,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no commit, no goodbye."""
        if self.alive():
            assert self.proc is not None  # alive() says so
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    # pause() and resume() are for started processes
    def pause(self) -> None:
        cast("subprocess.Popen[bytes]", self.proc).send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        cast("subprocess.Popen[bytes]", self.proc).send_signal(signal.SIGCONT)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait: a worker commits its batch and leaves its groups."""
        if self.proc is None:
            return 0
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired as e:
            self.proc.kill()
            self.proc.wait(10)
            raise TimeoutError(
                f"{self.what} did not stop within {timeout_s}s after SIGTERM; log: {self.log_path}"
            ) from e

    def stop_quietly(self, timeout_s: float = 30.0) -> None:
        """Clean-up after a test: resume the process if paused, stop it, kill it if it hangs."""
        if self.alive():
            self.resume()
            try:
                self.stop(timeout_s)
            except TimeoutError:
                pass  # stop() killed it

    def end(self, timeout_s: float = 60.0, sig: int = signal.SIGTERM) -> int | None:
        """Clean-up that never raises: send ``sig`` (SIGTERM), wait up to ``timeout_s``,
        then SIGKILL what is left: with ``new_session`` its whole process group, so also
        the children of a supervisor (``--processes N``). Its exit code, None if unknown."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "pid %d did not stop within %gs: SIGKILL to its %s",
                    self.proc.pid,
                    timeout_s,
                    "process group" if self.new_session else "process",
                )
        try:
            if self.new_session:
                os.killpg(self.proc.pid, signal.SIGKILL)
            elif self.proc.poll() is None:
                self.proc.kill()
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        return self.proc.returncode

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.log().splitlines()[-lines:])


class WorkerProcess(Process):
    """One ``kwheel worker`` subprocess with its output captured to a log file, and its
    tasks' events written to a stats file next to it (``stats_path``, default the log's
    path with the suffix ``.stats.jsonl``): see ``task_counters``."""

    what = "worker"

    def __init__(
        self,
        pipeline_ref: str,
        bootstrap: str,
        state_dir: Path,
        log_path: Path,
        slot: str | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
    ):
        args = [
            sys.executable,
            "-m",
            "kwheel",
            "worker",
            pipeline_ref,
            "--bootstrap-servers",
            bootstrap,
            "--state-dir",
            str(state_dir),
        ]
        if slot:
            args += ["--slot", slot]
        args += extra_args or []
        super().__init__(args, log_path, env, cwd, new_session)
        self._stats_path: Path | None = None

    @property
    def stats_path(self) -> Path:
        if self._stats_path is not None:
            return self._stats_path
        return self.log_path.with_suffix(".stats.jsonl")

    @stats_path.setter
    def stats_path(self, path: Path) -> None:
        self._stats_path = Path(path)

    def _header(self) -> str:
        return " ".join(self.args[3:])

    def _environment(self) -> dict[str, str]:
        return {**self.env, STATS_ENV: str(self.stats_path)}

    def task_events(self, event: str | None = None, computation: str = "") -> list[dict[str, Any]]:
        """What its tasks reported so far (``restored``, ``ready``, ``closed``), oldest first."""
        return read_events(self.stats_path, event, computation)

    def task_counters(self, computation: str = "") -> dict[str, int]:
        """The counters of every task (of ``computation``) it closed, summed: processed,
        duplicates, late, commits, aborts, restored, ... Only tasks closed by a worker that
        stopped (SIGTERM) or gave them up count: a killed worker closes nothing."""
        return task_counters(self.stats_path, computation)
