"""Run a pipeline end to end on a broker: its topics, worker processes, fed records and
watermarks, and its committed outputs (what the pytest fixture ``kwheel_pipeline_runner``
hands out). The feeding and inspecting calls mirror PipelineDriver's, so a test can run
the same steps in the driver and on Kafka."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import cast

from .. import registry
from ..config import WorkerConfig
from ..errors import KwheelError
from ..injector import Injector
from ..kafka.clients import wait_for_broker
from ..kafka.topics import create_topics
from ..kafka.writer import ID_HEADER
from ..pipeline import Pipeline
from ..record import Key, Record
from ..watermarks import MAX_WATERMARK, MIN_WATERMARK
from ..watermarks.control import Control, task_producer_id
from .processes import WorkerProcess, wait_until
from .readers import read_committed
from .stats import sum_counters

TEST_INJECTOR = "kwheel-test"


class PipelineRun:
    """``pipeline`` on the broker at ``bootstrap``; workers load it from ``ref``
    (``module:attribute``) with ``env`` added to their environment. Creates the topics."""

    def __init__(
        self,
        bootstrap: str,
        pipeline: Pipeline,
        ref: str,
        work_dir: Path,
        env: dict[str, str] | None = None,
        pythonpath: list[str] | None = None,
    ):
        self.bootstrap = bootstrap
        self.pipeline = pipeline.validate()
        self.ref = ref
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = [*(pythonpath or []), os.environ.get("PYTHONPATH", "")]
        self.env = {**(env or {}), "PYTHONPATH": os.pathsep.join(p for p in path if p)}
        # the workers' schema registry, if ``env`` gives them one, for what runs in here
        self.config = WorkerConfig(
            bootstrap_servers=bootstrap,
            schema_registry_url=self.env.get("KWHEEL_SCHEMA_REGISTRY_URL"),
            schema_registry_auth=self.env.get("KWHEEL_SCHEMA_REGISTRY_AUTH"),
        )
        self.pipeline = registry.bind(
            self.pipeline, registry.SchemaRegistry.from_config(self.config)
        )
        self.workers: list[WorkerProcess] = []
        self._injectors: dict[str, Injector] = {}
        create_topics(wait_for_broker(self.config), self.pipeline)

    # ---- workers ----------------------------------------------------------------------
    def start_workers(
        self, n: int = 1, args: list[str] | None = None, timeout_s: float = 60.0
    ) -> list[WorkerProcess]:
        """Start ``n`` more ``kwheel worker`` processes (slots w0, w1, ...), each with its own
        state dir, one at a time: each is started once the one before took its partitions
        (the embedded broker can stall a group that several members join at once; see
        docs/reliability.md)."""
        started = []
        for _ in range(n):
            slot = f"w{len(self.workers)}"
            w = WorkerProcess(
                self.ref,
                self.bootstrap,
                self.work_dir / f"state-{slot}",
                self.work_dir / f"{slot}.log",
                slot=slot,
                extra_args=args,
                env=self.env,
            )
            self.workers.append(w)
            started.append(w.start())
            self._wait_assigned(w, timeout_s)
        return started

    def _wait_assigned(self, w: WorkerProcess, timeout_s: float) -> None:
        """Until ``w`` owns a task of every computation that has a partition for each worker."""
        members = len(self.workers)
        want = {c for c, spec in self.pipeline.computations.items() if spec.partitions >= members}

        def assigned() -> bool:
            self.check_workers()
            return want <= set(re.findall(r"(\S+)\[\d+\]: assigned and ready", w.log()))

        wait_until(
            assigned,
            timeout_s,
            f"worker {w.log_path.stem} to be assigned tasks of {sorted(want)}",
            0.1,
        )

    def stop_workers(self, timeout_s: float = 60.0) -> None:
        """SIGTERM every worker; raise naming the first that did not exit cleanly, with its log."""
        failed = []
        for w in self.workers:
            rc = w.stop(timeout_s)
            if rc != 0:
                failed.append((w, rc))
        if failed:
            w, rc = failed[0]
            raise KwheelError(
                f"worker {w.log_path.stem} exited with {rc}; log {w.log_path}:\n{w.log()[-3000:]}"
            )

    def check_workers(self) -> None:
        """Raise if a worker died (with the end of its log): waiting on it would only time out."""
        for w in self.workers:
            if not w.alive():
                proc = cast("subprocess.Popen[bytes]", w.proc)  # workers here were started
                raise KwheelError(
                    f"worker {w.log_path.stem} exited with {proc.returncode}; "
                    f"log {w.log_path}:\n{w.log()[-3000:]}"
                )

    # ---- feeding ----------------------------------------------------------------------
    def send(
        self,
        stream: str,
        key: Key,
        value: object,
        timestamp: int | None = None,
        id: bytes | None = None,
    ) -> bytes:
        """Send one record through this run's injector of ``stream`` (it publishes watermarks)."""
        return self._injector(stream).send(stream, key, value, timestamp, id)

    def advance_watermark(self, stream: str, watermark: int) -> None:
        """Flush what was sent to ``stream`` and publish ``watermark`` for it."""
        inj = self._injector(stream)
        inj.advance(watermark)
        inj.publish()

    def finish(self, stream: str | None = None) -> None:
        """End ``stream`` (every stream this run fed if None): a final watermark."""
        for s in [stream] if stream else list(self._injectors):
            self._injector(s).close(final=True)
            del self._injectors[s]

    def inject(self, name: str, timeout_s: float = 300.0, args: list[str] | None = None) -> None:
        """Run the pipeline's declared injector ``name`` to its end (``kwheel inject``)."""
        cmd = [
            sys.executable,
            "-m",
            "kwheel",
            "inject",
            self.ref,
            name,
            "-b",
            self.bootstrap,
            *(args or []),
        ]
        done = subprocess.run(
            cmd, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout_s
        )
        if done.returncode != 0:
            raise KwheelError(
                f"kwheel inject {name} exited with {done.returncode}: {done.stderr[-3000:]}"
            )

    def _injector(self, stream: str) -> Injector:
        if stream not in self.pipeline.streams:
            raise KwheelError(
                f"unknown stream {stream!r} (declared: {', '.join(self.pipeline.streams)})"
            )
        inj = self._injectors.get(stream)
        if inj is None:
            inj = self._injectors[stream] = Injector(
                self.pipeline,
                TEST_INJECTOR,
                [stream],
                self.config,
                instance=stream,
                publish_interval_ms=None,
            )
        return inj

    # ---- inspecting -------------------------------------------------------------------
    def outputs(self, stream: str) -> list[Record]:
        """Every committed record of ``stream``, decoded, in partition and offset order."""
        s = self.pipeline.streams[stream]
        out = []
        for r in read_committed(self.bootstrap, s.topic):
            key = None if r.key is None else s.key_serde.decode(r.key)
            value = None if r.value is None else s.value_serde.decode(r.value)
            rid = next((v for k, v in r.headers if k == ID_HEADER), b"")
            # the key as the stream's key serde decodes it (None for a keyless record), the
            # id as its header holds it (None for a null header): not checked here
            out.append(Record(key, value, r.timestamp, rid, stream))  # type: ignore[arg-type]
        return out

    def output_watermark(self, computation: str) -> int:
        """min over the computation's tasks of the watermark they last published."""
        latest: dict[str, int] = {}
        for r in read_committed(self.bootstrap, self.pipeline.watermark_topic()):
            c = Control.decode(cast(bytes, r.value))  # every control record has a value
            latest[c.producer] = c.watermark
        spec = self.pipeline.computations[computation]
        return min(
            latest.get(task_producer_id(computation, p), MIN_WATERMARK)
            for p in range(spec.partitions)
        )

    def stats(self, computation: str) -> dict[str, int]:
        """The counters of ``computation``'s tasks summed, as ``PipelineDriver.stats`` (without
        ``pending_timers``), over the tasks its workers closed: a task closes when its worker
        stops or gives it up, so ask after ``stop_workers()``."""
        return sum_counters(e for w in self.workers for e in w.task_events("closed", computation))

    def wait_for_watermark(
        self, computation: str, watermark: int = MAX_WATERMARK, timeout_s: float = 120.0
    ) -> None:
        """Wait until every task of ``computation`` published at least ``watermark`` (default:
        the end of its input, which means it processed everything before it)."""

        def reached() -> bool:
            self.check_workers()
            return self.output_watermark(computation) >= watermark

        wait_until(
            reached, timeout_s, f"computation {computation!r} to reach watermark {watermark}", 0.25
        )

    def wait_for_outputs(self, stream: str, n: int, timeout_s: float = 120.0) -> list[Record]:
        """Wait until ``stream`` holds at least ``n`` committed records; return them."""

        def enough() -> list[Record] | None:
            self.check_workers()
            out = self.outputs(stream)
            return out if len(out) >= n else None

        return wait_until(enough, timeout_s, f"{n} records on stream {stream!r}", 0.25)

    def close(self) -> None:
        """Stop what is still running (without checking how it ended)."""
        for inj in self._injectors.values():
            try:
                inj.close(final=False)
            except Exception:
                pass
        self._injectors = {}
        for w in self.workers:
            w.stop_quietly()
