"""Keyed counts fed by declared injectors (JSON lines, an external topic)."""

import os

from kwheel import Pipeline
from kwheel.sources import JsonLines, KafkaTopic
from tests.pipelines.counting import Counter


def _name() -> str:
    return os.environ.get("KWHEEL_TEST_PIPELINE", "injected")


def from_file(name: str | None = None) -> Pipeline:
    p = Pipeline(name or _name())
    p.stream("events", partitions=3, value="json")
    p.stream("counts", partitions=3, value="json")
    path = os.environ.get("KWHEEL_TEST_FILE", "events.jsonl")
    p.injector(
        "file",
        lambda: JsonLines(path, key=lambda v: v["user"], timestamp=lambda v: v["ts"]),
        outputs=["events"],
        disorder_ms=1000,
    )
    p.computation("counter", Counter, inputs=["events"], outputs=["counts"])
    return p


def from_topic(name: str | None = None) -> Pipeline:
    p = Pipeline(name or _name())
    p.stream("events", partitions=3, value="json")
    p.stream("counts", partitions=3, value="json")
    topic = os.environ.get("KWHEEL_TEST_TOPIC", "external")
    for injector in ("topic", "topic-again"):  # two injectors over one topic: separate groups
        p.injector(
            injector,
            lambda: KafkaTopic(
                topic, key=lambda v: v["user"], timestamp=lambda v: v["ts"], disorder_ms=1000
            ),
            outputs=["events"],
        )
    p.computation("counter", Counter, inputs=["events"], outputs=["counts"])
    return p
