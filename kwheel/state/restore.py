"""Rebuild a task's store from its changelog partition, from where the store left off.

A restore runs in steps (``ChangelogRestore.step``) so that a worker can restore between
polls of its group consumer: a long restore then never keeps the consumer from polling and
heartbeating, and a task whose partition is revoked mid-restore simply stops (what it
applied so far is in the store with its offset, and a later restore goes on from there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from ..errors import BrokerError
from ..kafka.clients import ChangelogMessage
from ..pipeline import CHANGELOG_DELETE_RETENTION_MS
from .store import TaskStore

log = logging.getLogger("kwheel.restore")

CHUNK = 20000  # records asked of the reader at once
CHECKPOINT_EVERY = 100_000  # records between flushes of a restoring store
PROGRESS_EVERY_S = 5.0  # a long restore says how far it got this often
# Compacted topics drop tombstones after delete.retention.ms, which kwheel sets on its
# changelogs (and check_topics requires of existing ones): a store last applied longer ago
# than that could miss a delete, so it is rebuilt from scratch. 5/6 of it (20 h of 24 h)
# leaves a margin for clock skew and the time a restore takes.
STALE_AFTER_MS = CHANGELOG_DELETE_RETENTION_MS * 5 // 6

Progress = Callable[[int, int], None]


class ChangelogRestore:
    """Replays changelog records after ``store.applied_offset`` up to the end of the log as
    it was at ``begin``, in steps of bounded time.

    Begin only after this process fenced every earlier writer of the partition (the task's
    ``init_transactions``), so the end of the log is stable. ``progress(applied, total)``
    is called after every chunk (``total`` counts offsets, so transaction markers too)."""

    def __init__(
        self,
        store: TaskStore,
        reader: Consumer,
        topic: str,
        partition: int,
        timeout_s: float = 30.0,
        progress: Progress | None = None,
    ):
        self.store = store
        # a group-less read_committed consumer, shared by the restores of one runner: it
        # reads one changelog partition at a time (the runner restores one task after
        # another), so restoring 100 tasks does not start 100 consumers and their threads
        self.reader: Consumer | None = reader
        self.topic, self.partition = topic, partition
        self.timeout_s = timeout_s  # no record for this long: the broker is not answering
        self.progress = progress
        self.start = self.high = 0
        self.applied = 0  # records applied so far
        self.seconds = 0.0  # from the first step to the end (not the wait for its turn)
        self.done = False
        self._reading = False  # the first step says so
        self._checkpointed = 0
        self._last = -1
        self._began = self._said = self._idle_since = 0.0

    @property
    def total(self) -> int:
        return max(0, self.high - self.start)

    @property
    def remaining(self) -> int:
        """Offsets still to replay (0 once done)."""
        return 0 if self.done else max(0, self.high - 1 - self._last)

    def begin(self) -> None:
        """Find the range to replay; wipe a store too old or too far off to go on from."""
        reader = self.reader
        assert reader is not None, "closed"
        store, topic, partition = self.store, self.topic, self.partition
        low, high = reader.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=self.timeout_s
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
        self.start, self.high = max(start, low), high
        self._last = self.start - 1
        if self.start >= high:
            self._finish()
            return
        if self.progress is not None:
            self.progress(0, self.total)

    def _start_reading(self) -> None:
        """The first step: say what is replayed, and from where."""
        self._began = self._said = self._idle_since = time.monotonic()
        # a store killed mid-restore resumes here: each chunk is applied with its offset
        log.info(
            "restoring %s[%d]: offsets %d..%d (%d records%s)",
            self.topic,
            self.partition,
            self.start,
            self.high - 1,
            self.high - self.start,
            f", resuming after {self.store.applied_offset}"
            if self.store.applied_offset >= 0
            else "",
        )
        assert self.reader is not None
        self.reader.assign([TopicPartition(self.topic, self.partition, self.start)])
        self._reading = True

    def step(self, budget_s: float) -> bool:
        """Replay for about ``budget_s`` seconds (at least one read); True once done."""
        if self.done:
            return True
        if not self._reading:
            self._start_reading()
        reader = self.reader
        assert reader is not None
        deadline = time.monotonic() + budget_s
        while True:
            msgs = cast(
                "list[ChangelogMessage]",
                reader.consume(CHUNK, timeout=min(0.05, max(0.0, budget_s))),
            )
            now = time.monotonic()
            if msgs:
                self._idle_since = now
            elif now - self._idle_since > self.timeout_s:
                raise BrokerError(
                    f"restoring {self.topic}[{self.partition}]: no progress for "
                    f"{self.timeout_s:g}s at offset {self._last + 1} of {self.high}"
                )
            self._apply(msgs)
            if not self.done:
                pos = reader.position([TopicPartition(self.topic, self.partition)])[0].offset
                self.done = pos >= self.high
            if self.done:
                self._finish()
                return True
            if time.monotonic() >= deadline:
                return False

    def _apply(self, msgs: list[ChangelogMessage]) -> None:
        chunk: list[tuple[bytes, bytes | None]] = []
        for m in msgs:
            if m.partition() != self.partition or m.topic() != self.topic:
                continue  # left over from the shared reader's previous partition
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.done = True
                    continue
                raise KafkaException(err)
            chunk.append((m.key(), m.value()))
            self._last = m.offset()
            if self._last >= self.high - 1:
                self.done = True
        if not chunk:
            return
        self.store.apply(chunk, self._last)
        self.applied += len(chunk)
        if self.applied - self._checkpointed >= CHECKPOINT_EVERY:
            self.store.checkpoint()
            self._checkpointed = self.applied
        if self.progress is not None:
            self.progress(self.applied, self.total)
        now = time.monotonic()
        if now - self._said >= PROGRESS_EVERY_S and not self.done:
            self._said = now
            _log_progress(
                self.topic,
                self.partition,
                self._last + 1 - self.start,
                self.total,
                now - self._began,
            )

    def _finish(self) -> None:
        if self._reading:
            self.seconds = time.monotonic() - self._began
        self.done = True
        self.store.checkpoint()
        self.close()

    def close(self) -> None:
        """Stop reading (done, or the task was let go mid-restore: what was applied stays).
        The reader is its owner's to close."""
        if self.reader is not None:
            reader, self.reader = self.reader, None
            if self._reading:
                reader.unassign()


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
