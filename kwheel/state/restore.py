"""Rebuild a task's store from its changelog partition, from where the store left off."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from ..errors import BrokerError
from ..kafka.clients import ChangelogMessage, Config
from ..pipeline import CHANGELOG_DELETE_RETENTION_MS
from .store import TaskStore

log = logging.getLogger("kwheel.restore")

CHUNK = 20000
CHECKPOINT_EVERY = 100_000  # records between flushes of a restoring store
PROGRESS_EVERY_S = 5.0  # a long restore says how far it got this often
# Compacted topics drop tombstones after delete.retention.ms, which kwheel sets on its
# changelogs (and check_topics requires of existing ones): a store last applied longer ago
# than that could miss a delete, so it is rebuilt from scratch. 5/6 of it (20 h of 24 h)
# leaves a margin for clock skew and the time a restore takes.
STALE_AFTER_MS = CHANGELOG_DELETE_RETENTION_MS * 5 // 6


def restore(
    store: TaskStore,
    reader_conf: Config,
    topic: str,
    partition: int,
    timeout_s: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Replay changelog records after ``store.applied_offset`` up to the end; return how many.
    ``progress(applied, total)`` is called after every chunk (``total`` counts offsets, so
    transaction markers too): what the metrics show while a task restores.

    Call only after this process fenced every earlier writer of the partition (the task's
    ``init_transactions``), so the end of the log is stable.
    """
    reader = Consumer(reader_conf)
    try:
        low, high = reader.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout_s
        )
        start = store.applied_offset + 1
        if store.applied_offset >= 0 and time.time() * 1000 - store.applied_at_ms > STALE_AFTER_MS:
            log.warning(
                "local store of %s[%d] was last updated over %d h ago: rebuilding it from scratch",
                topic,
                partition,
                STALE_AFTER_MS // 3_600_000,
            )
            store.wipe()
            start = 0
        if start > high or (start < low and store.applied_offset >= 0):
            log.warning(
                "changelog %s[%d] spans offsets %d..%d but the local store is at %d: rebuilding it from scratch",
                topic,
                partition,
                low,
                high,
                start - 1,
            )
            store.wipe()
            start = low
        start = max(start, low)
        if start >= high:
            return 0
        # a store killed mid-restore resumes here: each chunk is applied with its offset
        log.info(
            "restoring %s[%d]: offsets %d..%d (%d records%s)",
            topic,
            partition,
            start,
            high - 1,
            high - start,
            f", resuming after {store.applied_offset}" if store.applied_offset >= 0 else "",
        )
        reader.assign([TopicPartition(topic, partition, start)])
        if progress is not None:
            progress(0, high - start)
        applied = checkpointed = 0
        chunk: list[tuple[bytes, bytes | None]] = []
        last = start - 1
        done = False
        began = said = time.monotonic()
        idle_deadline = began + timeout_s
        while not done:
            msgs = cast("list[ChangelogMessage]", reader.consume(CHUNK, timeout=0.05))
            if msgs:
                idle_deadline = time.monotonic() + timeout_s
            elif time.monotonic() > idle_deadline:
                raise BrokerError(
                    f"restoring {topic}[{partition}]: no progress for {timeout_s:g}s at offset {last + 1} of {high}"
                )
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    raise KafkaException(err)
                chunk.append((m.key(), m.value()))
                last = m.offset()
                if last >= high - 1:
                    done = True
            if chunk:
                store.apply(chunk, last)
                applied += len(chunk)
                chunk = []
                if applied - checkpointed >= CHECKPOINT_EVERY:
                    store.checkpoint()
                    checkpointed = applied
                if progress is not None:
                    progress(applied, high - start)
                now = time.monotonic()
                if now - said >= PROGRESS_EVERY_S and not done:
                    said = now
                    _log_progress(topic, partition, last + 1 - start, high - start, now - began)
            if not done:
                pos = reader.position([TopicPartition(topic, partition)])[0].offset
                done = pos >= high
        store.checkpoint()
        return applied
    finally:
        reader.close()


def _log_progress(topic: str, partition: int, done: int, total: int, seconds: float) -> None:
    """One line: offsets replayed of how many, the rate, and the time left at that rate."""
    rate = done / seconds if seconds > 0 else 0.0
    left = f"about {(total - done) / rate:.0f}s left" if rate > 0 else "time left unknown"
    log.info(
        "restoring %s[%d]: %d of %d offsets (%d%%), %.0f/s, %s",
        topic,
        partition,
        done,
        total,
        100 * done // max(total, 1),
        rate,
        left,
    )
