"""An embedded Kafka-protocol broker for tests and the demo: noida-db's Kafka service.

noida-db ships a binary inside its wheel. Its console script only wraps the binary, so we
run the binary directly, in its own process group, and stop the whole group. It keeps
records in memory: a restart loses them, so simulate broker faults with ``pause()`` /
``resume()`` (SIGSTOP/SIGCONT), never a restart.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import BrokerError


def noida_binary() -> Path:
    try:
        from importlib.resources import files

        path = Path(str(files("noida_db").joinpath("noida-db")))
    except ModuleNotFoundError:
        raise BrokerError(
            "the embedded broker needs the noida-db package: pip install 'kwheel[test]'"
        ) from None
    if not path.is_file():
        raise BrokerError(f"noida-db binary not found at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def _listening_sockets(port: int) -> set[str] | None:
    """Inodes of the sockets listening on TCP ``port`` (None where /proc/net has no answer)."""
    found = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        found = found or set()
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                found.add(cols[9])
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]  # (host, port) of an AF_INET socket
        return port


def resident_bytes(pid: int) -> int | None:
    """A process's resident memory in bytes (Linux: VmRSS of /proc/<pid>/status), None if
    unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


class EmbeddedBroker:
    """Start with ``start()`` (or as a context manager); ``bootstrap`` is host:port."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        port: int | None = None,
        log_path: str | Path | None = None,
    ):
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kwheel-broker-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self._pick_port = port is None  # a free port, picked again if another process takes it
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else self.data_dir / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        # A free port is free until someone binds it: another session starting its broker at
        # the same moment (parallel test workers) can take it first. Then this broker exits
        # while the other one answers on the port, so only an answer from our own process
        # counts, and a picked port is picked again.
        for attempt in range(5):
            if self._start(timeout_s):
                return self
            if not self._pick_port or attempt == 4:
                raise BrokerError(
                    f"port {self.port} of the embedded broker is taken by another process; "
                    f"see {self.log_path}"
                )
            self.port = free_port()
            self.bootstrap = f"127.0.0.1:{self.port}"
        raise AssertionError("unreachable")

    def _start(self, timeout_s: float) -> bool:
        """Start the process; True once it answers on its port, False if another one holds it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(noida_binary()),
            "start",
            "--only",
            "kafka",
            "--kafka-port",
            str(self.port),
            "--host",
            "127.0.0.1",
            "--data-dir",
            str(self.data_dir),
        ]
        log = open(self.log_path, "ab")
        self._log_from = log.tell()  # what this attempt writes
        self.proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self._port_taken():
                    self.proc = None
                    return False
                raise BrokerError(
                    f"embedded broker exited with {self.proc.returncode}; see {self.log_path}"
                )
            if self._answers():
                if self._listens():
                    return True
                if self._port_taken():  # someone else answered: ours is exiting
                    self.stop_process()
                    return False
            time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"embedded broker did not answer on {self.bootstrap} within {timeout_s:g}s; see {self.log_path}"
        )

    def _listens(self) -> bool:
        """Whether our process holds the listening socket of the port (Linux's /proc tells;
        elsewhere, assume it does)."""
        inodes = _listening_sockets(self.port)
        if inodes is None or self.proc is None:
            return True
        try:
            fds = os.listdir(f"/proc/{self.proc.pid}/fd")
        except OSError:
            return True
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{self.proc.pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
        return False

    def _port_taken(self) -> bool:
        """Whether the broker log says its port was in use (noida-db then exits)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_from)
                return b"already in use" in f.read()
        except OSError:
            return False

    def _answers(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        try:
            AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(
                timeout=2
            )
            return True
        except Exception:
            return False

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): a stall clients must ride out."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def resident_bytes(self) -> int | None:
        """The broker process's resident memory (VmRSS of /proc/<pid>/status), None where
        unknown (not running, not Linux)."""
        return None if self.proc is None else resident_bytes(self.proc.pid)

    def stop(self) -> None:
        self.stop_process()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def stop_process(self) -> None:
        """Stop the broker's process group (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MemorySampler:
    """Samples a broker's resident memory every ``interval_s`` in a background thread:
    ``peak`` and ``last`` in bytes (None until a sample was taken)."""

    def __init__(self, broker: EmbeddedBroker, interval_s: float = 1.0):
        import threading

        self.broker = broker
        self.interval_s = interval_s
        self.peak: int | None = None
        self.last: int | None = None
        self.peak_at = 0.0  # time.monotonic() of the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-memory", daemon=True)

    def _run(self) -> None:
        while True:
            rss = self.broker.resident_bytes()
            if rss is not None:
                self.last = rss
                if self.peak is None or rss > self.peak:
                    self.peak, self.peak_at = rss, time.monotonic()
            if self._stop.wait(self.interval_s):  # the sampling period, not synchronisation
                return

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
