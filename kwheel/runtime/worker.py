"""A worker process: runs the chosen computations until SIGTERM/SIGINT, then stops cleanly."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException

from .. import registry
from ..config import WorkerConfig
from ..errors import ConfigError, TopicMismatchError
from ..kafka import clients
from ..kafka.topics import check_topics
from ..pipeline import Pipeline
from ..watermarks.transport import WatermarkPublisher, WatermarkReader
from ..watermarks.upstream import WatermarkTable, feeding
from .health import WorkerHealth
from .runner import ComputationRunner

if TYPE_CHECKING:
    from .metrics import WorkerMetrics

log = logging.getLogger("kwheel.worker")


class Worker:
    def __init__(
        self, pipeline: Pipeline, cfg: WorkerConfig, computations: list[str] | None = None
    ):
        names = computations or list(pipeline.computations)
        unknown = [n for n in names if n not in pipeline.computations]
        if unknown:
            known = ", ".join(pipeline.computations)
            raise ConfigError(
                f"unknown computation {unknown[0]!r} in pipeline {pipeline.name!r} (known: {known})"
            )
        # a computation's re-keying stages run with it (kwheel/rekey.py)
        names = names + [
            n for n, c in pipeline.computations.items() if c.feeds in names and n not in names
        ]
        # Avro serdes declared with registry=True use the configured registry (kwheel.registry)
        self.pipeline = registry.bind(pipeline, registry.SchemaRegistry.from_config(cfg))
        self.cfg = cfg
        self.names = names
        self.runners: list[ComputationRunner] = []
        self.metrics: WorkerMetrics | None = None
        self.health = WorkerHealth(cfg.liveness_timeout_s)  # /healthz, /ready on the metrics port
        self._stop = False

    def stop(self, *_: object) -> None:
        """Ask the loop to finish its batch, commit and leave (signal-safe)."""
        self._stop = True
        self.health.phase = "stopping"

    def _wait_for_topics(self) -> None:
        """Retry with backoff until the pipeline's topics exist, up to startup_timeout_s."""
        admin = clients.wait_for_broker(self.cfg)
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        delay = 0.2
        while True:
            try:
                check_topics(admin, self.pipeline)
                return
            except (TopicMismatchError, KafkaException) as e:
                if time.monotonic() >= deadline or (
                    isinstance(e, TopicMismatchError) and not e.missing
                ):
                    raise
                log.warning("waiting for topics: %s", e)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            self.health.beat()
            if self._stop:
                raise SystemExit(0)

    def _catch_up_for(self, computation: str) -> Callable[[], None]:
        """The runner's way to read the watermark topic to its end. A runner does it first
        when it opens or renews tasks (claims.py), so until its step returns it is not
        ready (runtime/health.py)."""

        def catch_up() -> None:
            self.health.claim_started(computation)
            self.reader.catch_up(self.cfg.startup_timeout_s)

        return catch_up

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        if (
            self.cfg.metrics_port is not None
        ):  # first: scrapes answer while topics or restores are awaited
            from .metrics import WorkerMetrics

            self.metrics = WorkerMetrics(self.pipeline.name, self.cfg.slot)
            self.metrics.serve(self.cfg.metrics_host, self.cfg.metrics_port, self.health)
        try:
            self._run()
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def _run(self) -> None:
        self._wait_for_topics()
        topic = self.pipeline.watermark_topic()
        self.table = WatermarkTable(keeps_history=feeding(self.pipeline, self.names))
        self.reader = WatermarkReader(self.cfg, topic, self.table)
        self.reader.catch_up(self.cfg.startup_timeout_s)
        self.publisher = WatermarkPublisher(self.cfg, topic)
        self.runners = [
            ComputationRunner(
                self.pipeline, n, self.cfg, self.table, self.publisher, self._catch_up_for(n)
            )
            for n in self.names
        ]
        self.health.runners = self.runners
        if self.metrics is not None:
            for r in self.runners:
                r.metrics = self.metrics
            self.metrics.runners = self.runners
        log.info("worker %s running %s", self.cfg.slot or "(dynamic)", ", ".join(self.names))
        timeout = 0.1 / len(self.runners)
        failed = False
        if not self._stop:
            self.health.phase = "running"
        try:
            while not self._stop:
                self.reader.poll(0)
                for r in self.runners:
                    r.step(timeout)
                    self.health.step_done(r.spec.name)
                self.health.beat()
        except BaseException:
            failed = True
            raise
        finally:
            self.health.phase = "stopping"
            # A failed task has aborted its own batch already; the others commit theirs. After
            # a failure the consumers' positions may be past records nobody processed (a
            # poll's records for the tasks after the failed one), so no watermark is raised
            # from them: the batches commit as they are.
            for r in self.runners:
                try:
                    r.close(advance=not failed)
                except Exception as e:
                    log.warning("closing %s: %s", r.spec.name, e)
            self.publisher.flush()
            self.reader.close()
        log.info("worker %s stopped", self.cfg.slot or "(dynamic)")
