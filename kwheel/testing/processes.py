"""Worker processes for end-to-end tests: start, SIGKILL, SIGSTOP, stop, read their logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

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


class WorkerProcess:
    """One ``kwheel worker`` subprocess with its output captured to a log file."""

    def __init__(
        self,
        pipeline_ref: str,
        bootstrap: str,
        state_dir: Path,
        log_path: Path,
        slot: str | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ):
        self.args = [
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
            self.args += ["--slot", slot]
        self.args += extra_args or []
        self.env = dict(os.environ, **(env or {}))
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with open(self.log_path, "ab") as log:
            log.write(f"=== start {' '.join(self.args[3:])}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no commit, no goodbye."""
        if self.alive():
            assert self.proc is not None  # alive() says so
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    # pause() and resume() are for started workers
    def pause(self) -> None:
        cast("subprocess.Popen[bytes]", self.proc).send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        cast("subprocess.Popen[bytes]", self.proc).send_signal(signal.SIGCONT)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait: the worker commits its batch and leaves its groups."""
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
                f"worker did not stop within {timeout_s}s after SIGTERM; log: {self.log_path}"
            ) from e

    def stop_quietly(self, timeout_s: float = 30.0) -> None:
        """Clean-up after a test: resume the worker if paused, stop it, kill it if it hangs."""
        if self.alive():
            self.resume()
            try:
                self.stop(timeout_s)
            except TimeoutError:
                pass  # stop() killed it

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
