"""librdkafka settings for kwheel's clients, and waiting for a broker to answer."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from ..config import WorkerConfig
from ..errors import BrokerError

# Java-compatible key hashing: keys land where Kafka Streams and Java producers put them.
PARTITIONER = "murmur2_random"
# Largest fetch response a consumer accepts. Kafka bounds responses by fetch.max.bytes
# (50 MB by default), but some brokers (the embedded test broker among them) answer a fetch
# with everything after the offset: a restore of a large changelog then failed forever
# with "Invalid response size" (found by the long chaos run). librdkafka's limit is 2 GiB.
RECEIVE_MAX_BYTES = 1_000_000_000
KAFKA_LOG = logging.getLogger("kwheel.librdkafka")

log = logging.getLogger("kwheel.kafka")

#: librdkafka configuration properties, as confluent-kafka's clients take them
Config = dict[str, Any]


class ConsumedMessage(Protocol):
    """A message ``Consumer.consume`` returned, record or partition EOF event: its topic,
    partition and offset are set (confluent-kafka types every accessor Optional, as they
    are not on messages built by hand or on errors that concern no partition, which kwheel
    raises before looking at them)."""

    def topic(self) -> str: ...

    def partition(self) -> int: ...

    def offset(self) -> int: ...

    def key(self) -> bytes | None: ...

    def value(self) -> bytes | None: ...

    def timestamp(self) -> tuple[int, int]: ...

    def headers(self) -> Sequence[tuple[str, bytes | None]] | None: ...

    def error(self) -> KafkaError | None: ...


class ChangelogMessage(ConsumedMessage, Protocol):
    """A message consumed from a changelog topic: every record has a key, the store key
    kwheel wrote it with (state/layout.py); partition EOF events have none, and are told
    apart by ``error()`` before their key is read."""

    def key(self) -> bytes: ...


def base_config(cfg: WorkerConfig) -> Config:
    conf: Config = {"bootstrap.servers": cfg.bootstrap_servers, "log_level": 3}
    if cfg.log_format == "json":  # librdkafka's own lines through logging: JSON too
        conf["logger"] = KAFKA_LOG
    conf.update(cfg.kafka)
    return conf


def transactional_producer_config(cfg: WorkerConfig, transactional_id: str) -> Config:
    conf = base_config(cfg)
    conf.update(
        {
            "transactional.id": transactional_id,
            "transaction.timeout.ms": cfg.transaction_timeout_ms,
            "enable.idempotence": True,
            "partitioner": PARTITIONER,
            "linger.ms": 2,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1000000,
            "queue.buffering.max.kbytes": 1048576,
        }
    )
    return conf


def producer_config(cfg: WorkerConfig) -> Config:
    """Idempotent (not transactional) producer, for injection."""
    conf = base_config(cfg)
    conf.update({"enable.idempotence": True, "partitioner": PARTITIONER, "linger.ms": 5})
    return conf


def group_consumer_config(cfg: WorkerConfig, group_id: str, instance_id: str | None) -> Config:
    conf = base_config(cfg)
    conf.update(
        {
            "group.id": group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # eager: range co-assigns partition p of every input topic to one member (one
            # task); cooperative: the group assigns one lead topic, the runner the rest.
            "partition.assignment.strategy": (
                "cooperative-sticky" if cfg.rebalancing == "cooperative" else "range"
            ),
            "session.timeout.ms": cfg.session_timeout_ms,
            "heartbeat.interval.ms": max(100, cfg.session_timeout_ms // 5),
            "max.poll.interval.ms": max(cfg.transaction_timeout_ms * 2, cfg.session_timeout_ms),
            "fetch.wait.max.ms": 50,
            "queued.min.messages": 20000,
            "receive.message.max.bytes": RECEIVE_MAX_BYTES,
            # EOF events move the position past trailing transaction markers, which is
            # how a task knows it consumed up to a producer's watermark positions
            "enable.partition.eof": True,
        }
    )
    if instance_id:
        conf["group.instance.id"] = instance_id
    # names the process in the group's member list (kafka-consumer-groups --describe)
    conf.setdefault("client.id", f"kwheel-{instance_id or 'dynamic'}-{os.getpid()}")
    return conf


def reader_config(cfg: WorkerConfig) -> Config:
    """A group-less read_committed consumer used with assign() (restore, verification)."""
    conf = base_config(cfg)
    conf.update(
        {
            "group.id": "kwheel-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 20,
            "receive.message.max.bytes": RECEIVE_MAX_BYTES,
        }
    )
    return conf


def admin(cfg: WorkerConfig) -> AdminClient:
    return AdminClient(base_config(cfg))


def wait_for_broker(cfg: WorkerConfig, timeout_s: float | None = None) -> AdminClient:
    """Return an admin client once the cluster answers; BrokerError after the timeout."""
    timeout_s = cfg.startup_timeout_s if timeout_s is None else timeout_s
    client = admin(cfg)
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    last = "no answer"
    said = 0.0
    while True:
        try:
            client.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            if said:
                log.info("Kafka at %s answers now", cfg.bootstrap_servers)
            return client
        except KafkaException as e:
            last = e.args[0].str() if e.args else str(e)
        now = time.monotonic()
        if now >= deadline:
            raise BrokerError(
                f"cannot reach Kafka at {cfg.bootstrap_servers} within {timeout_s:g}s ({last})"
            )
        if now - said >= 5.0:  # say so at once, then every few seconds
            log.warning(
                "waiting for Kafka at %s (%s): retrying for another %.0fs",
                cfg.bootstrap_servers,
                last,
                deadline - now,
            )
            said = now
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 2.0)
