"""Create or verify every topic a pipeline needs (streams, changelogs, repartitions)."""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigEntry, ConfigResource, NewTopic

from ..errors import BrokerError, TopicMismatchError
from ..pipeline import Pipeline


def create_topics(client: AdminClient, pipeline: Pipeline, replication: int = 1) -> list[str]:
    """Create missing topics, then check all of them. Returns the names created."""
    need = pipeline.topics()
    existing = client.list_topics(timeout=10).topics
    new = [
        NewTopic(name, parts, replication, config=conf)
        for name, (parts, conf) in need.items()
        if name not in existing
    ]
    created = []
    if new:
        for name, fut in client.create_topics(new, operation_timeout=10).items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerError(f"cannot create topic {name!r}: {e.args[0].str()}") from None
        _wait_visible(client, [t.topic for t in new])
    check_topics(client, pipeline)
    return created


def check_topics(client: AdminClient, pipeline: Pipeline) -> None:
    """Raise TopicMismatchError naming the first missing or mismatched topic."""
    need = pipeline.topics()
    existing = client.list_topics(timeout=10).topics
    missing = [n for n in need if n not in existing]
    if missing:
        raise TopicMismatchError(
            f"pipeline {pipeline.name!r}: missing topics {', '.join(sorted(missing))} (run: kwheel topics create)",
            missing=tuple(sorted(missing)),
        )
    for name, (parts, _conf) in need.items():
        have = len(existing[name].partitions)
        if have != parts:
            raise TopicMismatchError(
                f"topic {name!r} has {have} partitions, pipeline {pipeline.name!r} needs {parts}"
            )
    compacted = [n for n, (_, c) in need.items() if c.get("cleanup.policy") == "compact"]
    if compacted:
        futs = client.describe_configs([ConfigResource("topic", n) for n in compacted])
        for res, fut in futs.items():
            try:
                have = fut.result()
            except KafkaException:
                continue  # the broker cannot describe configs: nothing to check against
            policy = have.get("cleanup.policy")
            if policy is not None and "compact" not in (policy.value or ""):
                raise TopicMismatchError(
                    f"changelog topic {res.name!r} has cleanup.policy={policy.value}, needs compact"
                )
            _check_delete_retention(res.name, need[res.name][1], have)


def _check_delete_retention(name: str, conf: dict[str, str], have: dict[str, ConfigEntry]) -> None:
    """A topic keeping tombstones shorter than kwheel sets could hand a restore a store
    that missed deletes (see kwheel.state.restore.STALE_AFTER_MS); longer is fine."""
    want = conf.get("delete.retention.ms")
    entry = have.get("delete.retention.ms")
    if want is None or entry is None or entry.value is None:
        return  # nothing wanted, or nothing reported to check against
    try:
        value = int(entry.value)
    except (TypeError, ValueError):
        return  # not reported as a number: nothing to check against
    if value < int(want):
        raise TopicMismatchError(
            f"changelog topic {name!r} has delete.retention.ms={value}, needs at least {want}"
            f" (or deleted keys, timers and seen ids can come back after a restore); fix: kafka-configs"
            f" --bootstrap-server <servers> --alter --entity-type topics --entity-name {name}"
            f" --add-config delete.retention.ms={want}"
        )


def _wait_visible(client: AdminClient, names: list[str], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        topics = client.list_topics(timeout=5).topics
        if all(n in topics and topics[n].partitions for n in names):
            return
        time.sleep(0.05)
    raise BrokerError(f"topics {', '.join(names)} not visible {timeout_s:g}s after creation")
