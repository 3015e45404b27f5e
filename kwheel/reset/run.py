"""Carrying out a ResetPlan against Kafka and this machine's state directory.

Every step can be run again: a reset that failed half-way is finished by running it again
(before any worker starts). The order keeps that true and keeps a worker that starts
meanwhile from doing harm: groups first (the broker refuses to delete a group with
members), then offsets, repartition records, changelogs, watermarks, local stores.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Callable

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewTopic, OffsetSpec

from ..config import WorkerConfig
from ..errors import BrokerError, KwheelError
from ..pipeline import CHANGELOG_DELETE_RETENTION_MS, Pipeline
from ..watermarks import MIN_WATERMARK
from ..watermarks.control import TASK, Control, task_producer_id
from ..watermarks.transport import WatermarkPublisher, read_to_end
from .plan import ResetPlan

Say = Callable[[str], None]


def check_stopped(admin: AdminClient, plan: ResetPlan, timeout_s: float) -> None:
    """Refuse while a group of the plan has members: the pipeline must be stopped."""
    groups = sorted(set(plan.groups.values()))
    for group, fut in admin.describe_consumer_groups(groups, request_timeout=timeout_s).items():
        try:
            members = fut.result().members
        except KafkaException as e:
            if e.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND:
                continue
            raise BrokerError(
                f"cannot describe consumer group {group!r}: {e.args[0].str()}"
            ) from None
        if members:
            who = ", ".join(m.group_instance_id or f"{m.client_id}@{m.host}" for m in members)
            raise KwheelError(
                f"consumer group {group!r} has {len(members)} active member(s) ({who}): stop its "
                f"workers first (a worker stopped with --slot stays a member until "
                f"session_timeout_ms has passed)"
            )


def check_stores_unused(plan: ResetPlan) -> None:
    """Refuse while a process on this machine holds a store of the plan (a running worker)."""
    for d in plan.stores:
        for lock in sorted(d.glob("*.lock")) if d.is_dir() else []:
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise KwheelError(
                    f"state store {lock.with_suffix('')} is in use by a process on this machine: "
                    f"stop its worker first"
                ) from None
            finally:
                os.close(fd)


def execute(
    pipeline: Pipeline, plan: ResetPlan, cfg: WorkerConfig, admin: AdminClient, say: Say
) -> None:
    """Delete what the plan says, saying each thing deleted."""
    timeout = cfg.startup_timeout_s
    check_stopped(admin, plan, timeout)
    check_stores_unused(plan)
    _delete_groups(admin, plan, timeout, say)
    _skip_to_end(admin, plan, timeout, say)
    _empty_repartition_topics(admin, plan, timeout, say)
    _recreate_changelogs(admin, plan, timeout, say)
    _reset_watermarks(pipeline, plan, cfg, say)
    _delete_stores(plan, say)


def _delete_groups(admin: AdminClient, plan: ResetPlan, timeout: float, say: Say) -> None:
    for group, fut in admin.delete_consumer_groups(
        sorted(set(plan.groups.values())), request_timeout=timeout
    ).items():
        try:
            fut.result()
            say(f"deleted consumer group {group} (its committed offsets)")
        except KafkaException as e:
            code = e.args[0].code()
            if code == KafkaError.GROUP_ID_NOT_FOUND:
                continue  # never committed, or deleted by an earlier run
            if code == KafkaError.NON_EMPTY_GROUP:
                raise KwheelError(
                    f"consumer group {group!r} got a member while resetting: stop its workers, "
                    f"then run the reset again"
                ) from None
            raise BrokerError(
                f"cannot delete consumer group {group!r}: {e.args[0].str()}"
            ) from None


def _ends(
    admin: AdminClient, topics: list[tuple[str, int]], timeout: float
) -> dict[TopicPartition, int]:
    """The high watermark of every partition of ``topics`` ((name, partitions) pairs)."""
    specs = {TopicPartition(t, p): OffsetSpec.latest() for t, n in topics for p in range(n)}
    if not specs:
        return {}
    futs = admin.list_offsets(
        specs, isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=timeout
    )
    return {tp: f.result().offset for tp, f in futs.items()}


def _partitions(admin: AdminClient, topic: str, timeout: float) -> int:
    meta = admin.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise BrokerError(f"topic {topic!r} does not exist (run: kwheel topics create)")
    return len(meta.partitions)


def _skip_to_end(admin: AdminClient, plan: ResetPlan, timeout: float, say: Say) -> None:
    for group, topics in sorted(plan.to_end.items()):
        ends = _ends(admin, [(t, _partitions(admin, t, timeout)) for t in topics], timeout)
        tps = [TopicPartition(tp.topic, tp.partition, o) for tp, o in ends.items()]
        fut = admin.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, tps)], request_timeout=timeout
        )[group]
        try:
            fut.result()
        except KafkaException as e:
            raise BrokerError(
                f"cannot set the offsets of group {group!r} on {', '.join(topics)}: {e.args[0].str()}"
            ) from None
        say(
            f"set group {group} to the end of {', '.join(topics)} "
            f"(their writers are reset and write them again)"
        )


def _empty_repartition_topics(
    admin: AdminClient, plan: ResetPlan, timeout: float, say: Say
) -> None:
    for topic in plan.emptied:
        ends = _ends(admin, [(topic, _partitions(admin, topic, timeout))], timeout)
        todo = [TopicPartition(tp.topic, tp.partition, o) for tp, o in ends.items() if o > 0]
        if todo:
            for tp, fut in admin.delete_records(todo, request_timeout=timeout).items():
                try:
                    fut.result()
                except KafkaException as e:
                    raise BrokerError(
                        f"cannot delete the records of {tp.topic}[{tp.partition}]: {e.args[0].str()}"
                    ) from None
        say(f"deleted the records of repartition topic {topic} (below offsets {_offsets(ends)})")


def _offsets(ends: dict[TopicPartition, int]) -> str:
    return ", ".join(
        f"[{tp.partition}] {o}" for tp, o in sorted(ends.items(), key=lambda e: e[0].partition)
    )


def _recreate_changelogs(admin: AdminClient, plan: ResetPlan, timeout: float, say: Say) -> None:
    """Delete each changelog topic and create it again, empty, with the same partitions,
    replication and topic configs. Kafka refuses DeleteRecords on compacted topics, which
    changelogs are, and a deleted topic frees its space at once (Kafka Streams' reset tool
    deletes its internal topics too)."""
    for topic, partitions in sorted(plan.changelogs.items()):
        meta = admin.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise BrokerError(
                f"changelog topic {topic!r} does not exist (run: kwheel topics create)"
            )
        replication = len(meta.partitions[0].replicas) or 1
        config = _topic_config(admin, topic, timeout)
        for fut in admin.delete_topics([topic], operation_timeout=timeout).values():
            try:
                fut.result()
            except KafkaException as e:
                if e.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise BrokerError(
                        f"cannot delete changelog topic {topic!r}: {e.args[0].str()}"
                    ) from None
        _create_again(admin, NewTopic(topic, partitions, replication, config=config), timeout)
        say(
            f"deleted changelog topic {topic} and created it again, empty ({partitions} partitions)"
        )


def _topic_config(admin: AdminClient, topic: str, timeout: float) -> dict[str, str]:
    """The topic's own settings (not the broker's defaults), to create it again with."""
    config = {
        "cleanup.policy": "compact",
        "delete.retention.ms": str(CHANGELOG_DELETE_RETENTION_MS),
    }
    try:
        described = admin.describe_configs(
            [ConfigResource("topic", topic)], request_timeout=timeout
        )
        for fut in described.values():
            for name, entry in fut.result().items():
                if _dynamic(entry.source) and entry.value:
                    config[name] = entry.value
    except KafkaException:
        pass  # the broker cannot describe configs: kwheel's own settings
    return config


def _dynamic(source: object) -> bool:
    """A setting of the topic itself (the client reports the source as a number)."""
    return source in (ConfigSource.DYNAMIC_TOPIC_CONFIG, ConfigSource.DYNAMIC_TOPIC_CONFIG.value)


def _create_again(admin: AdminClient, topic: NewTopic, timeout: float) -> None:
    """Create a topic just deleted; a broker still deleting it says it exists: wait."""
    deadline = time.monotonic() + timeout
    while True:
        fut = admin.create_topics([topic], operation_timeout=timeout)[topic.topic]
        try:
            fut.result()
            break
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS or time.monotonic() > deadline:
                raise BrokerError(
                    f"changelog topic {topic.topic!r} was deleted but cannot be created again "
                    f"({e.args[0].str()}): run kwheel topics create once Kafka has deleted it"
                ) from None
        time.sleep(0.5)
    while time.monotonic() < deadline:
        meta = admin.list_topics(topic.topic, timeout=timeout).topics.get(topic.topic)
        if meta is not None and meta.error is None and len(meta.partitions) == topic.num_partitions:
            return
        time.sleep(0.1)
    raise BrokerError(f"changelog topic {topic.topic!r} not visible {timeout:g}s after creating it")


def _reset_watermarks(pipeline: Pipeline, plan: ResetPlan, cfg: WorkerConfig, say: Say) -> None:
    """Tell every reader of the watermark topic to forget what the tasks published: they
    start over, and a watermark from before would pass records they write again."""
    topic = pipeline.watermark_topic()
    table = read_to_end(cfg, topic)
    publisher = WatermarkPublisher(cfg, topic)
    wall = int(time.time() * 1000)
    n = 0
    for name, partitions in plan.tasks.items():
        for p in range(partitions):
            pid = task_producer_id(name, p)
            if table.incarnation(pid) == 0 and table.latest(pid) is None:
                continue  # never opened: nothing to forget
            publisher.publish(
                Control(
                    pid,
                    TASK,
                    [],
                    MIN_WATERMARK,
                    [],
                    wall,
                    incarnation=table.incarnation(pid) + 1,
                    owner=f"reset-{uuid.uuid4().hex[:10]}",
                    reset=True,
                )
            )
            n += 1
    if publisher.flush(cfg.startup_timeout_s):
        raise BrokerError(f"could not publish the reset of the tasks' watermarks on {topic}")
    say(f"reset the published watermarks of {n} tasks on {topic}")


def _delete_stores(plan: ResetPlan, say: Say) -> None:
    for d in plan.stores:
        if not d.exists():
            continue
        # rename first: an interrupted delete must not leave half a store under its name
        doomed = d.with_name(f"{d.name}.deleting-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(d, doomed)
        shutil.rmtree(doomed)
        say(f"deleted local state stores {d}")
