"""Shared fixtures: one Kafka broker per test session, unique names, worker processes.

Which broker:
- ``KWHEEL_TEST_BOOTSTRAP=host:port``: an external Kafka (e.g. a real Apache Kafka).
- ``KWHEEL_TEST_KAFKA=testcontainers``: an Apache Kafka container (needs a Docker engine).
- otherwise: the embedded noida-db broker on a free loopback port.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from kwheel.testing.broker import EmbeddedBroker
from kwheel.testing.processes import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items):
    """Tests marked ``alone`` go last (see ``pytest_runtest_protocol``)."""
    items.sort(key=lambda item: item.get_closest_marker("alone") is not None)


_alone_lock = None


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """In parallel runs (pytest-xdist), a test marked ``alone`` runs with no other test at
    the same time: it holds an exclusive lock on a file of the session, every other test a
    shared one. Collected last, it starts once the other workers ran out of tests, and
    every other worker is done or waits (outside its tests' timeouts). For tests that are
    CPU-bound under a short timeout, such as the million-key timer test."""
    global _alone_lock
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    import fcntl

    if _alone_lock is None:  # one file for the session's workers: their basetemps' parent
        base = Path(item.config.option.basetemp).parent  # xdist gives each worker one
        _alone_lock = open(base / "alone.lock", "a")  # held for the session
    alone = item.get_closest_marker("alone") is not None
    fcntl.flock(_alone_lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(_alone_lock, fcntl.LOCK_UN)


# kwheel's own test kit (the fixtures users get); also an entry point once kwheel is installed
pytest_plugins = ["kwheel.testing.pytest_plugin", "pytester"]


@dataclass
class Kafka:
    bootstrap: str
    kind: str  # "embedded", "external" or "testcontainers"
    broker: EmbeddedBroker | None = None

    @property
    def embedded(self) -> bool:
        return self.kind == "embedded"

    def pause(self) -> None:
        if self.broker is None:
            pytest.skip("pausing the broker needs the embedded broker")
        self.broker.pause()

    def resume(self) -> None:
        assert self.broker is not None
        self.broker.resume()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    external = os.environ.get("KWHEEL_TEST_BOOTSTRAP")
    if external:
        yield Kafka(external, "external")
        return
    if os.environ.get("KWHEEL_TEST_KAFKA") == "testcontainers":
        if not shutil.which("docker"):
            pytest.fail("KWHEEL_TEST_KAFKA=testcontainers but no docker client on PATH")
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:3.9.1") as kc:
            yield Kafka(kc.get_bootstrap_server(), "testcontainers")
        return
    broker = EmbeddedBroker(data_dir=tmp_path_factory.mktemp("broker")).start()
    try:
        yield Kafka(broker.bootstrap, "embedded", broker)
    finally:
        broker.stop()


@pytest.fixture(autouse=True)
def _each_test_drops_its_topics(request):
    """After a test that used the embedded broker (its workers stopped by then), delete the
    topics it created. That broker keeps every record in memory and rewrites all of them to
    its snapshot file about every second while anything changes: carrying every earlier
    test's records (a million-key test among them) made each later test slower, and kept a
    core busy for the rest of the session. An external Kafka may be shared with parallel
    sessions, so there nothing is deleted."""
    if "kafka" not in request.fixturenames:
        yield
        return
    kafka = request.getfixturevalue("kafka")
    if not kafka.embedded:
        yield
        return
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap, "log_level": 0})
    before = set(admin.list_topics(timeout=10).topics)
    yield
    kafka.broker.resume()  # in case the test ended while it was paused
    new = sorted(
        t for t in set(admin.list_topics(timeout=10).topics) - before if not t.startswith("__")
    )
    if new:
        for done in admin.delete_topics(new, operation_timeout=10).values():
            done.result(timeout=30)


@pytest.fixture(scope="session")
def schema_registry():
    """A Confluent-compatible schema registry on a loopback port (kwheel.testing.registry:
    no real one runs here), with basic auth to prove credentials get through."""
    from kwheel.testing.registry import TestRegistry

    with TestRegistry(auth=("kwheel", "r3g-s3cret")) as r:
        yield r


@pytest.fixture
def registry_env(schema_registry) -> dict[str, str]:
    """The registry settings as worker environment."""
    return {
        "KWHEEL_SCHEMA_REGISTRY_URL": schema_registry.url,
        "KWHEEL_SCHEMA_REGISTRY_AUTH": "kwheel:r3g-s3cret",
    }


@pytest.fixture(scope="session")
def kwheel_kafka(kafka):
    """The test kit's fixtures use the same broker as the rest of the suite."""
    return kafka


@pytest.fixture
def name(request) -> str:
    """A pipeline name no other test uses (so its topics and groups are fresh)."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def workers(kafka, tmp_path):
    """Factory for worker processes; every one still running is stopped after the test."""
    started: list[WorkerProcess] = []

    def make(
        ref: str,
        pipeline_name: str,
        slot: str | None = None,
        state_dir: Path | None = None,
        args: list[str] | None = None,
        tag: str | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        tag = tag or slot or f"w{len(started)}"
        env = {
            "KWHEEL_TEST_PIPELINE": pipeline_name,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            **(env or {}),
        }
        w = WorkerProcess(
            ref,
            kafka.bootstrap,
            state_dir or tmp_path / f"state-{tag}",
            tmp_path / f"{tag}.log",
            slot=slot,
            extra_args=args,
            env=env,
        )
        started.append(w)
        return w.start()

    yield make
    for w in started:
        w.stop_quietly()
