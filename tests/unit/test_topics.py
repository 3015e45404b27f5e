"""check_topics against a stand-in admin client: the changelog configs it requires."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

from kwheel import Computation, Pipeline
from kwheel.errors import TopicMismatchError
from kwheel.kafka.topics import check_topics


class Nop(Computation):
    def process_record(self, ctx, record):
        pass


def pipeline() -> Pipeline:
    p = Pipeline("p")
    p.stream("events", partitions=2, source=True)
    p.computation("counter", Nop, inputs=["events"])
    return p


class Done:
    def __init__(self, value=None, error=None):
        self.value, self.error = value, error

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


class FakeAdmin:
    """Every topic the pipeline needs exists; ``configs[topic]`` is what describe_configs
    reports (``KafkaException`` if the broker cannot describe configs)."""

    def __init__(self, configs):
        self.configs = configs

    def list_topics(self, timeout=None):
        topics = {
            n: SimpleNamespace(partitions=dict.fromkeys(range(parts)))
            for n, (parts, _) in pipeline().topics().items()
        }
        return SimpleNamespace(topics=topics)

    def describe_configs(self, resources):
        out = {}
        for res in resources:
            conf = self.configs.get(res.name, {})
            if isinstance(conf, Exception):
                out[res] = Done(error=conf)
            else:
                out[res] = Done({k: SimpleNamespace(name=k, value=v) for k, v in conf.items()})
        return out


def admin(changelog_retention: str | None) -> FakeAdmin:
    changelog = {"cleanup.policy": "compact"}
    if changelog_retention is not None:
        changelog["delete.retention.ms"] = changelog_retention
    return FakeAdmin(
        {
            "p.counter.changelog": changelog,
            "p.watermarks": {"cleanup.policy": "compact", "delete.retention.ms": "60000"},
        }
    )


@pytest.mark.parametrize("value", ["86400000", "604800000"])
def test_a_changelog_keeping_tombstones_at_least_as_long_as_kwheel_passes(value):
    check_topics(admin(value), pipeline())


def test_a_changelog_keeping_tombstones_shorter_fails_with_one_line_saying_how_to_fix_it():
    with pytest.raises(TopicMismatchError) as e:
        check_topics(admin("60000"), pipeline())
    msg = str(e.value)
    assert "\n" not in msg
    assert "'p.counter.changelog' has delete.retention.ms=60000, needs at least 86400000" in msg
    assert "--entity-name p.counter.changelog --add-config delete.retention.ms=86400000" in msg


def test_the_check_is_skipped_when_the_broker_does_not_report_the_setting():
    check_topics(admin(None), pipeline())


def test_the_check_is_skipped_when_the_broker_cannot_describe_configs():
    err = KafkaException(KafkaError(KafkaError._UNSUPPORTED_FEATURE))
    check_topics(FakeAdmin({"p.counter.changelog": err, "p.watermarks": err}), pipeline())


def test_cleanup_policy_is_still_checked_first():
    bad = FakeAdmin(
        {"p.counter.changelog": {"cleanup.policy": "delete", "delete.retention.ms": "60000"}}
    )
    with pytest.raises(TopicMismatchError, match=r"cleanup.policy=delete, needs compact"):
        check_topics(bad, pipeline())
