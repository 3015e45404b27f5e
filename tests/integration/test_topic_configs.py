"""Changelog topic configs on a real broker: kwheel sets delete.retention.ms and checks it."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from kwheel.errors import TopicMismatchError
from kwheel.kafka.topics import check_topics, create_topics
from kwheel.pipeline import CHANGELOG_DELETE_RETENTION_MS
from tests.helpers import setup_topics
from tests.pipelines.counting import keyed_count


def _admin(kafka) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka.bootstrap})


def _delete_retention(kafka, topic: str) -> str:
    """The topic's delete.retention.ms as the broker's admin API describes it; skip the test
    when the broker cannot describe topic configs (check_topics then skips its check too)."""
    admin = _admin(kafka)  # kept alive until the answer is in
    (fut,) = admin.describe_configs([ConfigResource("topic", topic)]).values()
    try:
        entry = fut.result(timeout=10).get("delete.retention.ms")
    except KafkaException as e:
        code = e.args[0].code()
        if code < 0 and code != KafkaError._UNSUPPORTED_FEATURE:
            raise  # a local client failure (timeout, transport), not the broker lacking the API
        pytest.skip(
            f"the {kafka.kind} broker cannot describe topic configs ({e}); check_topics skips this check there"
        )
    if entry is None:
        pytest.skip(f"the {kafka.kind} broker does not report delete.retention.ms of topics")
    return entry.value


def test_created_changelog_topics_keep_tombstones_as_long_as_kwheel_needs(kafka, name):
    p = keyed_count(name)
    setup_topics(kafka.bootstrap, p)
    assert (
        _delete_retention(kafka, p.changelog_topic("counter"))
        == str(CHANGELOG_DELETE_RETENTION_MS)
        == "86400000"
    )


def test_a_changelog_topic_with_a_short_delete_retention_is_refused(kafka, name):
    p = keyed_count(name)
    changelog = p.changelog_topic("counter")
    admin = _admin(kafka)
    partitions = p.topics()[changelog][0]
    short = NewTopic(
        changelog,
        partitions,
        1,
        config={"cleanup.policy": "compact", "delete.retention.ms": "60000"},
    )
    for fut in admin.create_topics([short], operation_timeout=10).values():
        fut.result()
    if _delete_retention(kafka, changelog) != "60000":
        pytest.skip(
            f"the {kafka.kind} broker did not keep delete.retention.ms=60000 given at creation"
        )
    # topics create makes the other topics, leaves the existing changelog alone, and its check fails
    with pytest.raises(TopicMismatchError) as created:
        create_topics(admin, p)
    with pytest.raises(TopicMismatchError) as checked:
        check_topics(admin, p)
    for e in (created, checked):
        msg = str(e.value)
        assert "\n" not in msg
        assert (
            f"changelog topic {changelog!r} has delete.retention.ms=60000, needs at least 86400000"
            in msg
        )
        assert f"--entity-name {changelog} --add-config delete.retention.ms=86400000" in msg
    assert _delete_retention(kafka, changelog) == "60000"  # kwheel never alters an existing topic


def test_a_changelog_topic_keeping_tombstones_longer_passes(kafka, name):
    p = keyed_count(name)
    changelog = p.changelog_topic("counter")
    admin = _admin(kafka)
    week = str(7 * 24 * 3600 * 1000)
    longer = NewTopic(
        changelog,
        p.topics()[changelog][0],
        1,
        config={"cleanup.policy": "compact", "delete.retention.ms": week},
    )
    for fut in admin.create_topics([longer], operation_timeout=10).values():
        fut.result()
    if _delete_retention(kafka, changelog) != week:
        pytest.skip(
            f"the {kafka.kind} broker did not keep delete.retention.ms={week} given at creation"
        )
    create_topics(admin, p)
    check_topics(admin, p)
