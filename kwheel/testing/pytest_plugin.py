"""pytest fixtures for testing kwheel pipelines.

Installed with kwheel as the ``pytest11`` entry point named after this module, so it loads
once whether found through the entry point, ``-p kwheel.testing.pytest_plugin`` or a
conftest's ``pytest_plugins``; ``-p no:kwheel.testing.pytest_plugin`` turns it off.

- ``kwheel_driver``: makes PipelineDrivers (no broker; closed after the test).
- ``kwheel_kafka`` (session): a broker with ``.bootstrap``: ``KWHEEL_TEST_BOOTSTRAP=host:port``,
  else an embedded one (the noida-db package). Override it to share a broker you already run.
- ``kwheel_pipeline_runner``: makes PipelineRuns on that broker (topics, worker
  processes, feeding, committed outputs); their workers are stopped after the test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

# kwheel's modules are imported inside the fixtures: this plugin loads in every pytest run
# of an environment where kwheel is installed, most of which never use it.
if TYPE_CHECKING:
    from ..pipeline import Pipeline
    from .driver import PipelineDriver
    from .endtoend import PipelineRun


class KafkaBroker(Protocol):
    """What ``kwheel_kafka`` gives (and what an override of it must give)."""

    @property
    def bootstrap(self) -> str:
        """host:port[,host:port]"""


@dataclass(frozen=True)
class ExternalKafka:
    bootstrap: str


@pytest.fixture(scope="session")
def kwheel_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A Kafka-protocol broker for the whole session."""
    external = os.environ.get("KWHEEL_TEST_BOOTSTRAP")
    if external:
        yield ExternalKafka(external)
        return
    from .broker import EmbeddedBroker

    broker = EmbeddedBroker(data_dir=tmp_path_factory.mktemp("kwheel-broker")).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kwheel_driver(tmp_path: Path) -> Iterator[Callable[..., PipelineDriver]]:
    """``kwheel_driver(pipeline, only=None, wall_clock_ms=None, config=None)`` -> PipelineDriver."""
    from .driver import PipelineDriver

    made: list[PipelineDriver] = []

    def make(pipeline: Pipeline, **kwargs: Any) -> PipelineDriver:
        kwargs.setdefault("state_dir", tmp_path / f"driver-{len(made)}")
        d = PipelineDriver(pipeline, **kwargs)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.fixture
def kwheel_pipeline_runner(
    kwheel_kafka: KafkaBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., PipelineRun]]:
    """``kwheel_pipeline_runner(pipeline, ref, env=None)`` -> PipelineRun on ``kwheel_kafka``.

    ``ref`` (``module:attribute``) is how worker processes load the same pipeline; the
    test's root directory is on their PYTHONPATH. Give each test's pipeline its own name."""
    from .endtoend import PipelineRun

    made: list[PipelineRun] = []

    def make(pipeline: Pipeline, ref: str, env: dict[str, str] | None = None) -> PipelineRun:
        run = PipelineRun(
            kwheel_kafka.bootstrap,
            pipeline,
            ref,
            Path(tmp_path) / f"run-{len(made)}",
            env=env,
            pythonpath=[str(request.config.rootpath)],
        )
        made.append(run)
        return run

    yield make
    for run in made:
        run.close()
