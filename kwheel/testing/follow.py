"""Follow a pipeline's topics while it runs, and delete what is no longer needed.

For long end-to-end runs on a broker that keeps every record in memory (the embedded
one): a ``TopicFollower`` reads topics with read_committed in a background thread as their
records are committed, hands each record to its topic's handler (which keeps what the
end-of-run checks need, in compact form), and every ``purge_interval_s`` deletes
(``DeleteRecords``) a partition's records below the lower of

- the offset it has read to (everything below was handed to the handler), and
- the offset every consumer group that reads the topic has committed (a record deleted
  before its group committed past it would be lost to the pipeline).

A topic without an entry in ``purge`` is only read, never deleted. A record deleted by
someone else before the follower read it (kwheel purges consumed repartition records) is
a failure of the follower: it is reported by ``check()``, never skipped silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from ..kafka.writer import ID_HEADER
from .readers import CommittedRecord

if TYPE_CHECKING:
    from ..kafka.clients import ConsumedMessage

log = logging.getLogger("kwheel.testing")

Handler = Callable[[CommittedRecord], None]
Where = tuple[str, int]  # (topic, partition)


class FollowerError(AssertionError):
    """The follower could not see every committed record (or a handler failed)."""


class TopicFollower:
    """``handlers``: topic -> function called with each committed record, in offset order
    per partition, from the follower's thread (under ``lock``). ``purge``: topic -> the
    consumer groups that read it; those topics' records are deleted once read and
    committed past by every one of those groups. ``note`` receives a line at least every
    30 s (what was deleted, what each topic still holds) and one per problem."""

    def __init__(
        self,
        bootstrap: str,
        handlers: Mapping[str, Handler],
        purge: Mapping[str, list[str]] | None = None,
        purge_interval_s: float = 10.0,
        note: Callable[[str], None] | None = None,
        sizes_of: list[str] | None = None,
    ):
        self.bootstrap = bootstrap
        self.handlers = dict(handlers)
        self.purge = dict(purge or {})
        self.purge_interval_s = purge_interval_s
        self.note = note or (lambda line: None)
        self.sizes_of = list(sizes_of or [])  # topics whose retained records are logged
        self.sizes_interval_s = max(30.0, purge_interval_s)  # a request per partition
        self.lock = threading.Lock()
        self.read_to: dict[Where, int] = {}  # everything below was handed to the handler
        self.deleted: dict[Where, int] = {}  # deleted below (requests that succeeded)
        self.records_deleted = 0
        self.retained: dict[str, int] = {}  # topic -> records the broker holds, last round
        self.error: str | None = None
        self._stop = threading.Event()
        self._inflight: dict[Where, tuple[int, Future[object]]] = {}
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "kwheel-follow",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                # a fetch below the log start is an error, never a silent jump ahead
                "auto.offset.reset": "error",
                "fetch.wait.max.ms": 100,
                "log_level": 3,
            }
        )
        self._admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        self._groups = {
            g: Consumer(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": g,
                    "enable.auto.commit": False,
                    "log_level": 0,
                }
            )
            for gs in self.purge.values()
            for g in gs
        }
        self.partitions: dict[str, int] = {}
        for topic in sorted(set(self.handlers) | set(self.sizes_of)):
            md = self._consumer.list_topics(topic, timeout=10).topics[topic]
            if md.error is not None:
                raise KafkaException(md.error)
            self.partitions[topic] = len(md.partitions)
        self._consumer.assign(
            [TopicPartition(t, p, 0) for t in self.handlers for p in range(self.partitions[t])]
        )
        for t in self.handlers:
            for p in range(self.partitions[t]):
                self.read_to[(t, p)] = 0
        self._thread = threading.Thread(target=self._run, name="topic-follower", daemon=True)

    # ---- the thread ------------------------------------------------------------------------
    def start(self) -> TopicFollower:
        self._thread.start()
        return self

    def _run(self) -> None:
        last_purge = last_sizes = time.monotonic()
        try:
            while not self._stop.is_set():
                self._read(0.2)
                if time.monotonic() - last_purge >= self.purge_interval_s:
                    last_purge = time.monotonic()
                    self._purge_round()
                if time.monotonic() - last_sizes >= self.sizes_interval_s:
                    last_sizes = time.monotonic()
                    self._sizes()
        except Exception as e:  # reported by check(): the run cannot be verified
            self._fail(f"the follower stopped: {type(e).__name__}: {e}")

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = why
            self.note(f"follower: {why}")
        self._stop.set()

    def _read(self, timeout_s: float) -> None:
        msgs = cast("list[ConsumedMessage]", self._consumer.consume(10_000, timeout_s))
        if not msgs:
            return
        with self.lock:
            for m in msgs:
                topic, p = m.topic(), m.partition()
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        where = (topic, p)
                        self.read_to[where] = max(self.read_to[where], m.offset())
                        continue
                    if err.code() == KafkaError._AUTO_OFFSET_RESET:
                        self._fail(
                            f"{topic}[{p}]: records from offset {self.read_to.get((topic, p))} "
                            f"were deleted before the follower read them ({err.str()})"
                        )
                        return
                    if err.retriable() or err.code() == KafkaError._TRANSPORT:
                        continue  # a stalled broker: librdkafka goes on fetching
                    self._fail(f"{topic}[{p}]: {err.str()}")
                    return
                hdrs = tuple(m.headers() or ())
                rid = next((v for k, v in hdrs if k == ID_HEADER), None)
                r = CommittedRecord(m.key(), m.value(), m.timestamp()[1], rid, p, m.offset(), hdrs)
                self.handlers[topic](r)
                self.read_to[(topic, p)] = m.offset() + 1

    def _purge_round(self) -> None:
        self._collect()
        todo = []
        for topic, groups in self.purge.items():
            committed: dict[int, list[int]] = {p: [] for p in range(self.partitions[topic])}
            try:
                for g in groups:
                    tps = self._groups[g].committed(
                        [TopicPartition(topic, p) for p in committed], timeout=5
                    )
                    for tp in tps:
                        if tp.error is None:
                            committed[tp.partition].append(tp.offset)
            except KafkaException as e:  # a stalled broker: next round
                self.note(f"follower: committed offsets of {topic} not read ({e}); next round")
                continue
            for p, offsets in committed.items():
                where = (topic, p)
                if len(offsets) != len(groups) or min(offsets, default=0) < 0:
                    continue  # some group has committed nothing there yet
                below = min([self.read_to[where], *offsets])
                if below > self.deleted.get(where, 0) and where not in self._inflight:
                    todo.append(TopicPartition(topic, p, below))
        if todo:
            try:
                futures = self._admin.delete_records(todo, request_timeout=30)
            except KafkaException as e:
                self.note(f"follower: delete_records refused ({e}); next round")
            else:
                for tp, future in futures.items():
                    self._inflight[(tp.topic, tp.partition)] = (tp.offset, future)

    def _collect(self) -> None:
        for where, (offset, future) in list(self._inflight.items()):
            if not future.done():
                continue
            del self._inflight[where]
            try:
                future.result()
            except KafkaException as e:
                self.note(f"follower: could not delete {where[0]}[{where[1]}] below {offset}: {e}")
                continue
            before = self.deleted.get(where, 0)
            if offset > before:
                self.records_deleted += offset - before
                self.deleted[where] = offset

    def _sizes(self) -> None:
        """What the broker holds of each followed (and each ``sizes_of``) topic: end minus
        log start, summed over partitions."""
        sizes = {}
        try:
            for topic in sorted(self.partitions):
                total = 0
                for p in range(self.partitions[topic]):
                    lo, hi = self._consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=5
                    )
                    total += hi - lo
                sizes[topic] = total
        except KafkaException:
            return  # a stalled broker: next round
        self.retained = sizes
        self.note(
            f"follower: deleted {self.records_deleted} records so far; broker holds "
            + ", ".join(f"{t} {n}" for t, n in sizes.items())
        )

    # ---- the caller's side -----------------------------------------------------------------
    def check(self) -> None:
        """Raise if the follower failed (missed records, a handler raised)."""
        if self.error is not None:
            raise FollowerError(self.error)

    def caught_up_with(self, ends: Mapping[Where, int]) -> bool:
        self.check()
        with self.lock:
            return all(self.read_to[w] >= end for w, end in ends.items())

    def ends(self) -> dict[Where, int]:
        """Every followed partition's end offset (high watermark) now."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "kwheel-follow-ends"})
        try:
            return {
                (t, p): c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                for t in self.handlers
                for p in range(self.partitions[t])
            }
        finally:
            c.close()

    def wait_caught_up(self, timeout_s: float) -> None:
        """Wait until everything committed so far was read (once the pipeline has stopped:
        every record). Raises TimeoutError naming the partitions behind."""
        from .processes import wait_until

        ends = self.ends()
        try:
            wait_until(lambda: self.caught_up_with(ends), timeout_s, "the follower to catch up")
        except TimeoutError:
            behind = {w: (self.read_to[w], e) for w, e in ends.items() if self.read_to[w] < e}
            raise TimeoutError(
                f"the follower did not read to the end within {timeout_s}s: "
                f"(topic, partition): (read to, end) {behind}"
            ) from None

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        from .processes import wait_until

        def settled() -> bool:  # requests run in librdkafka's threads
            self._collect()
            return not self._inflight

        try:
            wait_until(settled, 5, "delete requests in flight", interval_s=0.05)
        except TimeoutError:
            pass  # best effort: what they delete no one reads any more
        for c in self._groups.values():
            c.close()
        self._consumer.close()
